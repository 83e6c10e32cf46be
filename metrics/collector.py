"""Turns the counter store, the roll-up and the cache's own size into Prometheus families."""
import logging
import time

from django.conf import settings
from django.core.cache import caches
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import registry as r
from . import rollup
from .store import counters, parse_field

log = logging.getLogger(__name__)


def cache_size_bytes() -> float:
    """Bytes held by every configured cache: Redis INFO used_memory, or the in-process cache's entries."""
    total = 0.0
    seen_redis = set()
    for alias in settings.CACHES:
        backend = caches[alias]
        try:
            if hasattr(backend, "client") and "redis" in type(backend).__module__:
                from django_redis import get_redis_connection

                conn = get_redis_connection(alias)
                where = repr(conn.connection_pool.connection_kwargs)
                if where not in seen_redis:  # two aliases on one server count once
                    seen_redis.add(where)
                    total += conn.info("memory")["used_memory"]
            elif hasattr(backend, "_cache"):  # LocMemCache keeps pickled bytes per key
                with backend._lock:
                    total += sum(len(k) + len(v) for k, v in backend._cache.items())
        except Exception:
            log.warning("metrics: cache '%s' did not report its size", alias, exc_info=True)
    return total


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
        yield GaugeMetricFamily(r.CACHE_SIZE.name, r.CACHE_SIZE.help, value=cache_size_bytes())
        yield from self._trace_backlog()

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
