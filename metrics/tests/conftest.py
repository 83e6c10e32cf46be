"""Fixtures of the metrics tests: an isolated counter namespace and a scrape helper."""
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture(autouse=True)
def metrics_namespace(settings):
    """Each test counts under its own Redis prefix (a shared Redis may hold other runs' totals)."""
    from django.core.cache import cache

    from metrics.store import counters

    settings.SMARTFLOW_METRICS_PREFIX = f"smartflow-test:{uuid.uuid4().hex[:12]}"
    counters.reset_local()
    yield settings.SMARTFLOW_METRICS_PREFIX
    client = counters.redis()
    if client is not None:
        client.delete(counters.key())
    cache.delete(f"{settings.SMARTFLOW_METRICS_PREFIX}:rollup")
    counters.reset_local()


class Scrape:
    def __init__(self, response: httpx.Response):
        self.response = response
        self.text = response.text
        self.families = {f.name: f for f in text_string_to_metric_families(self.text)}

    def value(self, sample_name: str, **labels) -> float:
        """Sum of the samples of that name whose labels include these."""
        total = 0.0
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def series(self, sample_name: str) -> list[dict]:
        return [s.labels for f in self.families.values() for s in f.samples if s.name == sample_name]


@pytest.fixture
def scrape(gateway):
    def get() -> Scrape:
        gateway.flush_traces()
        response = httpx.get(f"{gateway.management_url}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return Scrape(response)
    return get
