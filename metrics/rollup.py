"""The roll-up behind the gauges: latency percentiles and cache hit rate of the last 1,000 VAS logs.

A Celery beat task refreshes it every SMARTFLOW_METRICS_ROLLUP_SECONDS and
stores it in the cache (shared through Redis when configured). A scrape that
finds it missing or stale (no worker running: the embedded default) makes it
on the spot; it is one indexed query of 1,000 narrow rows.
"""
import math
import time

from django.conf import settings
from django.core.cache import cache

from traces.models import VASLog

WINDOW = 1000


def cache_key() -> str:
    return f"{settings.SMARTFLOW_METRICS_PREFIX}:rollup"


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def compute() -> dict:
    rows = list(VASLog.objects.order_by("-timestamp", "-id").values_list("latency_ms", "cache")[:WINDOW])
    latencies = sorted(latency / 1000 for latency, _ in rows)
    hits = sum(1 for _, c in rows if c == "hit")
    misses = sum(1 for _, c in rows if c == "miss")
    return {
        "p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "p99": percentile(latencies, 99),
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "count": len(rows), "computed_at": time.time(),
    }


def refresh() -> dict:
    value = compute()
    cache.set(cache_key(), value, timeout=None)
    return value


def current(max_age: float | None = None) -> dict:
    """The stored roll-up, or a fresh one when it is missing or older than max_age seconds."""
    if max_age is None:
        max_age = 2 * settings.SMARTFLOW_METRICS_ROLLUP_SECONDS
    value = cache.get(cache_key())
    if value is None or time.time() - value.get("computed_at", 0) > max_age:
        value = refresh()
    return value
