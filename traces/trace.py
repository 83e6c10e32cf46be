"""A request's trace while it is in flight: stage timings and the fields of its VASLog."""
import os
import threading
import time
from datetime import datetime, timezone

NO_GUARDRAILS = {"policies": [], "pii": [], "risk_score": 0.0}


def new_id() -> str:
    # Time-ordered (ms) so ids sort like timestamps; random tail for uniqueness.
    return f"{time.time_ns() // 1_000_000:012x}{_random_bytes(10).hex()}"


_pool = bytearray()
_pool_lock = threading.Lock()


def _random_bytes(count: int) -> bytes:
    """os.urandom, read 4 KiB at a time: a getrandom() call per request cost more than the rest of
    the trace's set-up. A forked child starts with an empty pool, never its parent's bytes."""
    global _pool
    with _pool_lock:
        if len(_pool) < count:
            _pool = bytearray(os.urandom(4096))
        taken = bytes(_pool[-count:])
        del _pool[-count:]
    return taken


def _empty_pool():
    global _pool, _pool_lock
    _pool, _pool_lock = bytearray(), threading.Lock()  # (another thread may have held it at the fork)


os.register_at_fork(after_in_child=_empty_pool)


class Trace:
    __slots__ = ("id", "started_wall", "started", "last", "stages", "upstream_s", "fields")

    def __init__(self, endpoint: str):
        self.id = new_id()
        self.started_wall = datetime.now(timezone.utc)
        self.started = self.last = time.perf_counter()
        self.stages: list[dict] = []
        self.upstream_s = 0.0
        self.fields: dict = {"endpoint": endpoint, "status_code": 0, "cache": "bypass",
                             "compliance": "pass", "guardrails": NO_GUARDRAILS, "routing": {},
                             "prompt": [], "response": None, "error": ""}

    def stage(self, name: str, upstream: bool = False) -> float:
        """Close the stage that began at the previous mark; returns its seconds."""
        now = time.perf_counter()
        seconds = now - self.last
        self.stages.append({"name": name, "ms": round(seconds * 1000, 3)})
        if upstream:
            self.upstream_s += seconds
        self.last = now
        return seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def overhead_ms(self) -> float:
        return round((self.elapsed() - self.upstream_s) * 1000, 3)

    def set(self, **fields):
        self.fields.update(fields)

    def record(self) -> dict:
        total = self.elapsed()
        return dict(self.fields, id=self.id, timestamp=self.started_wall, stages=self.stages,
                    latency_ms=round(total * 1000, 3),
                    overhead_ms=round((total - self.upstream_s) * 1000, 3))
