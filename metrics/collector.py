"""Turns the counter store, the roll-up and the cache's own size into Prometheus families."""
import logging
import time

from django.conf import settings
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from proxy.routing import PROVIDER_NAMES

from . import registry as r
from . import rollup
from .store import counters, parse_field

log = logging.getLogger(__name__)


def metacache() -> dict:
    """The MetaCache's own entries and bytes (not Redis' whole used_memory)."""
    from proxy.cache import store

    return store.current().stats()


class SmartflowCollector:
    """Registered once in prometheus_client's default registry (next to django-prometheus)."""

    def collect(self):
        try:
            totals = counters.totals()
        except Exception:
            log.exception("metrics: counters unavailable")
            totals = {}
        by_metric: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        for key, value in totals.items():
            name, labels = parse_field(key)
            by_metric.setdefault(name, []).append((labels, value))

        for metric in r.COUNTERS:
            family = CounterMetricFamily(metric.name, metric.help, labels=metric.labels)
            for labels, value in sorted(by_metric.get(metric.name, ())):
                if len(labels) == len(metric.labels):
                    family.add_metric(labels, value)
            if not metric.labels and not family.samples:
                family.add_metric((), 0.0)  # one series without labels: there from the start, at 0
            yield family

        yield self._overhead(by_metric.get(r.OVERHEAD.name, ()))

        try:
            rolled = rollup.current()
        except Exception:
            log.exception("metrics: roll-up failed")
            rolled = None
        for metric, key in ((r.LATENCY_P50, "p50"), (r.LATENCY_P90, "p90"), (r.LATENCY_P99, "p99"),
                            (r.CACHE_HIT_RATE, "hit_rate")):
            family = GaugeMetricFamily(metric.name, metric.help)
            if rolled is not None:
                family.add_metric((), rolled[key])
            yield family
        age = GaugeMetricFamily(r.ROLLUP_AGE.name, r.ROLLUP_AGE.help)
        if rolled is not None:
            age.add_metric((), max(time.time() - rolled["computed_at"], 0.0))
        yield age
        held = metacache()
        yield GaugeMetricFamily(r.CACHE_SIZE.name, r.CACHE_SIZE.help, value=held["bytes"])
        yield GaugeMetricFamily(r.CACHE_ENTRIES.name, r.CACHE_ENTRIES.help, value=held["entries"])
        yield from self._trace_backlog()
        yield self._breakers()

    def _breakers(self):
        from proxy.routing_policies import breaker

        family = GaugeMetricFamily(r.BREAKER_OPEN.name, r.BREAKER_OPEN.help, labels=r.BREAKER_OPEN.labels)
        try:
            open_keys = breaker.current().open_circuits()
        except Exception:
            log.warning("metrics: circuit breaker state unavailable", exc_info=True)
            return family
        for provider in PROVIDER_NAMES:
            family.add_metric((provider,), sum(1 for key in open_keys if key.split("/", 1)[0] == provider))
        return family

    def _trace_backlog(self):
        from traces.recorder import recorder

        count = GaugeMetricFamily(r.TRACE_BACKLOG.name, r.TRACE_BACKLOG.help)
        size = GaugeMetricFamily(r.TRACE_BACKLOG_BYTES.name, r.TRACE_BACKLOG_BYTES.help)
        try:
            backlog = counters.writer_backlog(recorder)
        except Exception:
            log.warning("metrics: other processes' trace backlog unavailable", exc_info=True)
            backlog = (len(recorder.pending), recorder.pending.bytes)
        count.add_metric((), backlog[0])
        size.add_metric((), backlog[1])
        yield count
        yield size

    def _overhead(self, samples):
        counts = {labels[1]: value for labels, value in samples if labels[:1] == ("bucket",)}
        total = next((v for labels, v in samples if labels == ("sum",)), 0.0)
        buckets, running = [], 0.0
        for bound in (*map(repr, r.OVERHEAD_BUCKETS), "+Inf"):
            running += counts.get(bound, 0.0)
            buckets.append((bound, running))
        return HistogramMetricFamily(r.OVERHEAD.name, r.OVERHEAD.help, buckets=buckets, sum_value=total)

    def describe(self):
        return []  # collected at scrape time only (values live outside this process)


collector = SmartflowCollector()
