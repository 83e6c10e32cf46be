"""Several gateway processes add up to one set of counters (Redis), the classic Python-gateway failure."""
import subprocess

import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from metrics.store import counters

from .helpers import PYTHON, ROOT, child_env

OTHER_PROCESS = """
import django
django.setup()
from metrics.store import counters
for _ in range(7):
    counters.observe({"provider": "anthropic", "upstream_model": "claude-sonnet-4-6", "status_code": 200,
                      "cache": "miss", "tokens_input": 3, "tokens_output": 2, "overhead_ms": 2.0})
counters.flush()
"""


def requests_total(client, **labels) -> float:
    text = client.get("/metrics").content.decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "smartflow_requests_total" and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.skipif(not settings.REDIS_URL, reason="counters are shared through Redis (REDIS_URL)")
def test_counts_from_other_processes_add_up(client, db):
    for _ in range(3):
        counters.observe({"provider": "anthropic", "upstream_model": "claude-sonnet-4-6", "status_code": 200,
                          "overhead_ms": 1.0})
    for _ in range(2):
        subprocess.run([PYTHON, "-c", OTHER_PROCESS], cwd=ROOT, env=child_env(), check=True, timeout=60)
    assert requests_total(client, provider="anthropic", model="claude-sonnet-4-6") == 3 + 2 * 7


def test_without_redis_the_counters_live_in_process(client, db, settings):
    settings.REDIS_URL = ""
    counters.observe({"provider": "gemini", "upstream_model": "gemini-2.5-pro", "status_code": 504,
                      "overhead_ms": 1.0})
    assert requests_total(client, provider="gemini", status="5xx") == 1
