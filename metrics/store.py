"""Live counters: noted in memory on the request path, added up in Redis (or in process).

The recorder calls ``counters.observe(record)`` for every finished request:
it keeps the few values the counters need (not the record) in a deque, no
I/O. ``flush()`` (run after each trace write attempt, and before each scrape)
turns what was noted into increments and applies them in one Redis pipeline,
so several gateway processes add up to one set of totals. Without REDIS_URL
the totals live in this process. The trace writer's backlog is a gauge each
process publishes under its pid; a scrape adds up the fresh ones.
"""
import bisect
import logging
import os
import threading
import time
from collections import defaultdict, deque
from decimal import Decimal

from django.conf import settings

from . import registry as r

log = logging.getLogger(__name__)
SEP = "\x1f"  # between a metric name and its label values in a Redis hash field
MAX_UNFLUSHED = 500_000  # requests noted but not yet counted; beyond this the oldest are dropped
MAX_MODEL_NAME = 200  # a longer name is no known model: counted as "other" without keeping it
WRITER_FRESH_SECONDS = 30  # a process's published backlog older than this is gone (process ended)


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


def note(record: dict) -> tuple:
    """What the counters need of a finished request (the record itself is not kept)."""
    name = record.get("upstream_model") or record.get("client_model") or ""
    return (record.get("provider"), name if len(name) <= MAX_MODEL_NAME else "", record.get("status_code"),
            record.get("cache"), record.get("tokens_input"), record.get("tokens_output"),
            record.get("cost_usd"), record.get("overhead_ms"), record.get("unpriced"),
            failovers(record.get("routing")))


def failovers(routing: dict | None) -> tuple:
    """(from provider, to provider) for each step of a routing chain from a failed attempt to
    another target (a retry of the same target is no failover)."""
    chain = [hop for hop in (routing or {}).get("chain") or () if isinstance(hop, dict)]
    target = lambda hop: (hop.get("provider"), hop.get("model"))  # noqa: E731
    return tuple((a.get("provider"), b.get("provider")) for a, b in zip(chain, chain[1:])
                 if a.get("status") != 200 and target(a) != target(b))


def increments(notes) -> dict[str, float]:
    """What a list of noted requests adds to each counter (and the overhead histogram). The notes
    are summed per label set first: a flush's hundreds of requests share a few."""
    groups: dict[tuple, list] = {}  # labels -> [requests, input tokens, output tokens, cost]
    buckets = [0] * (len(r.OVERHEAD_BUCKETS) + 1)
    overhead_sum = 0.0
    for provider, name, status_code, cache, tokens_input, tokens_output, cost, overhead_ms, unpriced, steps in notes:
        sums = groups.get(labels := (provider, name, status_code, cache, unpriced, steps))
        if sums is None:
            sums = groups[labels] = [0, 0, 0, 0.0]
        sums[0] += 1
        if tokens_input:
            sums[1] += int(tokens_input)
        if tokens_output:
            sums[2] += int(tokens_output)
        if cost:
            sums[3] += float(Decimal(str(cost)))
        overhead_s = max(float(overhead_ms or 0.0), 0.0) / 1000
        buckets[bisect.bisect_left(r.OVERHEAD_BUCKETS, overhead_s)] += 1
        overhead_sum += overhead_s
    tiers = _tier_table() if groups else None
    models: dict[str, str] = {}
    out: dict[str, float] = defaultdict(float)
    for (provider, name, status_code, cache, unpriced, steps), (count, tokens_input, tokens_output, cost) in groups.items():
        for source, target in steps:
            out[field(r.FAILOVERS, r.provider_label(source), r.provider_label(target))] += count
        provider = r.provider_label(provider)
        model = models.get(name)
        if model is None:
            model = models[name] = r.model_label(name, tiers)
        status_code = int(status_code or 0)
        status = r.status_label(status_code)
        out[field(r.REQUESTS, provider, model, status)] += count
        if cache == "hit":
            out[field(r.CACHE_HITS, provider, model)] += count
        elif cache == "miss":
            out[field(r.CACHE_MISSES, provider, model)] += count
        if tokens_input:
            out[field(r.TOKENS_INPUT, provider, model)] += tokens_input
        if tokens_output:
            out[field(r.TOKENS_OUTPUT, provider, model)] += tokens_output
        if cost:
            out[field(r.COST, provider, model)] += cost
        if unpriced:
            out[field(r.UNPRICED, provider, model)] += count
        # 502/503/504 are what the gateway answers when the provider failed or timed out.
        if status_code in (502, 503, 504) and provider != r.NO_PROVIDER:
            out[field(r.PROVIDER_ERRORS, provider, status)] += count
    for slot, count in enumerate(buckets):
        if count:
            le = repr(r.OVERHEAD_BUCKETS[slot]) if slot < len(r.OVERHEAD_BUCKETS) else "+Inf"
            out[field(r.OVERHEAD, "bucket", le)] += count
    if notes:
        out[field(r.OVERHEAD, "sum")] += overhead_sum
        out[field(r.OVERHEAD, "count")] += len(notes)
    return out


class CounterStore:
    def __init__(self):
        self._noted: deque = deque(maxlen=MAX_UNFLUSHED)
        self._lock = threading.Lock()
        self._local: dict[str, float] = defaultdict(float)  # the totals, without Redis
        self._unsent: dict[str, float] = defaultdict(float)  # increments Redis has not taken yet
        self._redis = None
        self._redis_url = None
        self._writer_seen = (0, 0)  # the trace writer's failures and drops already counted
        self._writer_published = (None, 0.0)  # (backlog, bytes) last published, and when

    # --- request path -------------------------------------------------------------
    def observe(self, record: dict):
        self._noted.append(note(record))

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
        notes = []
        while True:
            try:
                notes.append(self._noted.popleft())
            except IndexError:
                break
        with self._lock:
            for name, value in increments(notes).items() if notes else ():
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

    def writer_key(self) -> str:
        return f"{settings.SMARTFLOW_METRICS_PREFIX}:trace-writer"

    def on_writer(self, recorder):
        """Recorder reporter (writer thread): its failures and drops become counters, its backlog a gauge."""
        seen_failures, seen_dropped = self._writer_seen
        failures, dropped = recorder.write_failures, recorder.dropped
        self._writer_seen = (failures, dropped)
        with self._lock:
            if failures > seen_failures:
                self._unsent[field(r.TRACE_WRITE_FAILURES)] += failures - seen_failures
            if dropped > seen_dropped:
                self._unsent[field(r.TRACES_DROPPED)] += dropped - seen_dropped
        self.flush()
        backlog = (len(recorder.pending), recorder.pending.bytes)
        last, when = self._writer_published
        client = self.redis()
        if client is None or (backlog == last and time.time() - when < WRITER_FRESH_SECONDS / 3):
            return
        try:
            client.hset(self.writer_key(), str(os.getpid()), f"{backlog[0]} {backlog[1]} {time.time()}")
            self._writer_published = (backlog, time.time())
        except Exception:
            log.warning("metrics: Redis unavailable; trace backlog not published")

    def writer_backlog(self, recorder) -> tuple[int, int]:
        """Traces and bytes waiting to be written: this process's now, plus the other processes' fresh ones."""
        count, size = len(recorder.pending), recorder.pending.bytes
        client = self.redis()
        if client is None:
            return count, size
        me, oldest = str(os.getpid()), time.time() - WRITER_FRESH_SECONDS
        gone = []
        for pid, value in client.hgetall(self.writer_key()).items():
            other_count, other_size, stamp = value.decode().split()
            if float(stamp) < oldest:
                gone.append(pid)
            elif pid.decode() != me:
                count, size = count + int(other_count), size + int(other_size)
        if gone:
            client.hdel(self.writer_key(), *gone)
        return count, size

    def reset_local(self):
        with self._lock:
            self._local.clear()
            self._unsent.clear()
        self._noted.clear()
        self._writer_seen = (0, 0)
        self._writer_published = (None, 0.0)


counters = CounterStore()

