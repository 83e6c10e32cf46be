"""Live counters: noted in memory on the request path, added up in Redis (or in process).

The recorder calls ``counters.observe(record)`` for every finished request:
one deque append, no I/O. ``flush()`` (run after each trace batch is written,
and before each scrape) turns what was noted into increments and applies
them in one Redis pipeline, so several gateway processes add up to one set
of totals. Without REDIS_URL the totals live in this process.
"""
import bisect
import logging
import threading
from collections import defaultdict, deque
from decimal import Decimal

from django.conf import settings

from . import registry as r

log = logging.getLogger(__name__)
SEP = "\x1f"  # between a metric name and its label values in a Redis hash field
MAX_UNFLUSHED = 500_000  # records noted but not yet counted; beyond this the oldest are dropped


def field(metric: r.Metric, *values: str) -> str:
    return SEP.join((metric.name, *values))


def parse_field(key: str) -> tuple[str, tuple[str, ...]]:
    name, *values = key.split(SEP)
    return name, tuple(values)


def is_float(key: str) -> bool:
    return key.startswith(r.COST.name + SEP) or key.endswith(SEP + "sum")


def _tier_table():
    from proxy import routing

    try:
        return routing.table.get_sync()
    except Exception:  # no database (or called from the event loop): the last snapshot, if any
        return routing.table.last()


def increments(records) -> dict[str, float]:
    """What a list of VASLog records adds to each counter (and the overhead histogram)."""
    tiers = _tier_table()
    models: dict[str, str] = {}
    out: dict[str, float] = defaultdict(float)
    for rec in records:
        provider = r.provider_label(rec.get("provider"))
        name = rec.get("upstream_model") or rec.get("client_model") or ""
        model = models.get(name)
        if model is None:
            model = models[name] = r.model_label(name, tiers)
        status_code = int(rec.get("status_code") or 0)
        status = r.status_label(status_code)
        out[field(r.REQUESTS, provider, model, status)] += 1
        cache = rec.get("cache")
        if cache == "hit":
            out[field(r.CACHE_HITS, provider, model)] += 1
        elif cache == "miss":
            out[field(r.CACHE_MISSES, provider, model)] += 1
        if rec.get("tokens_input"):
            out[field(r.TOKENS_INPUT, provider, model)] += int(rec["tokens_input"])
        if rec.get("tokens_output"):
            out[field(r.TOKENS_OUTPUT, provider, model)] += int(rec["tokens_output"])
        cost = rec.get("cost_usd")
        if cost:
            out[field(r.COST, provider, model)] += float(Decimal(str(cost)))
        # 502/503/504 are what the gateway answers when the provider failed or timed out.
        if status_code in (502, 503, 504) and provider != r.NO_PROVIDER:
            out[field(r.PROVIDER_ERRORS, provider, status)] += 1
        overhead_s = max(float(rec.get("overhead_ms") or 0.0), 0.0) / 1000
        slot = bisect.bisect_left(r.OVERHEAD_BUCKETS, overhead_s)
        le = repr(r.OVERHEAD_BUCKETS[slot]) if slot < len(r.OVERHEAD_BUCKETS) else "+Inf"
        out[field(r.OVERHEAD, "bucket", le)] += 1
        out[field(r.OVERHEAD, "sum")] += overhead_s
        out[field(r.OVERHEAD, "count")] += 1
    return out


class CounterStore:
    def __init__(self):
        self._noted: deque = deque(maxlen=MAX_UNFLUSHED)
        self._lock = threading.Lock()
        self._local: dict[str, float] = defaultdict(float)  # the totals, without Redis
        self._unsent: dict[str, float] = defaultdict(float)  # increments Redis has not taken yet
        self._redis = None
        self._redis_url = None

    # --- request path -------------------------------------------------------------
    def observe(self, record: dict):
        self._noted.append(record)

    # --- off the request path -------------------------------------------------------
    def key(self) -> str:
        return f"{settings.SMARTFLOW_METRICS_PREFIX}:counters"

    def redis(self):
        url = settings.REDIS_URL
        if not url:
            return None
        if self._redis is None or self._redis_url != url:
            import redis

            self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            self._redis_url = url
        return self._redis

    def flush(self):
        """Counts what was noted since the last flush and applies it (one Redis round trip)."""
        records = []
        while True:
            try:
                records.append(self._noted.popleft())
            except IndexError:
                break
        with self._lock:
            for name, value in increments(records).items() if records else ():
                self._unsent[name] += value
            if not self._unsent:
                return
            pending, self._unsent = self._unsent, defaultdict(float)
            client = self.redis()
            if client is None:
                for name, value in pending.items():
                    self._local[name] += value
                return
            try:
                pipe = client.pipeline(transaction=True)  # all of a flush or none of it
                for name, value in pending.items():
                    if is_float(name):
                        pipe.hincrbyfloat(self.key(), name, value)
                    else:
                        pipe.hincrby(self.key(), name, int(value))
                pipe.execute()
            except Exception:
                # Keep them for the next flush rather than losing counts while Redis is away.
                log.warning("metrics: Redis unavailable; %d counter increments kept for later", len(pending))
                for name, value in pending.items():
                    self._unsent[name] += value

    def totals(self) -> dict[str, float]:
        """Every counter's current total (across processes when Redis is used)."""
        self.flush()
        client = self.redis()
        if client is None:
            with self._lock:
                return dict(self._local)
        raw = client.hgetall(self.key())
        return {k.decode(): float(v) for k, v in raw.items()}

    def on_batch(self, batch):
        """Recorder listener: counters are flushed along with each written trace batch."""
        self.flush()

    def reset_local(self):
        with self._lock:
            self._local.clear()
            self._unsent.clear()
        self._noted.clear()


counters = CounterStore()

