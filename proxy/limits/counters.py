"""Limit counters: checked and reserved in one atomic step, settled in another.

A counter is a hash {used, held} under a key naming its scope and window (a minute for
rpm/tpm, the budget period for spend). `reserve` checks every counter of a request and, only
when all pass, adds to each: one Lua script call on Redis (Redis runs one script at a time, so
two gateway processes can never both take the last unit), one locked step in process. A
counter refuses when used + held + need > limit; the amount held is clamped to what is left, so
a large reservation cannot push a counter past its limit by itself. `settle` swaps a
reservation for what was really used. Amounts are integers (tokens, requests, nano-USD) below
2**53 (exact in Lua's doubles), written with %d (Redis would refuse 1e+17).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from proxy.redis_sync import SyncRedis, loop_client

log = logging.getLogger(__name__)
BACKOFF_S = 5.0
SOCKET_TIMEOUT_S = 0.5  # a call; a Redis that hangs costs the requests waiting on it this once, then the back-off
CONNECT_TIMEOUT_S = 1.0  # a refused connection fails at once; a burst of new connections on a busy host needs more


MAX_AMOUNT = 2**53


@dataclass(frozen=True)
class Counter:
    key: str
    limit: int | None  # None: counted, never refused (a team's spend without a cap)
    need: int  # refused when used + held + need > limit
    hold: int  # reserved until settled (clamped to what the limit leaves)
    use: int  # counted at once (a request against rpm)
    ttl: int  # seconds the key outlives its window

    def __post_init__(self):  # a client's max_tokens of 10**30 must not break the arithmetic
        for name in ("need", "hold"):
            object.__setattr__(self, name, min(getattr(self, name), MAX_AMOUNT))
        if self.limit is not None:
            object.__setattr__(self, "limit", min(self.limit, MAX_AMOUNT))


class Refused(Exception):
    def __init__(self, index: int, current: int):
        super().__init__(f"counter {index} refused at {current}")
        self.index, self.current = index, current


class CountersDown(Exception):
    """Redis cannot answer now (or is backing off after a failure)."""


class MemoryCounters:
    """One process's counters (no Redis, or Redis down and failing open)."""

    backend = "in-process"

    def __init__(self):
        self.values: dict[str, list] = {}  # key -> [used, held, expires]
        self.lock = threading.Lock()
        self.next_sweep = 0.0

    async def reserve(self, counters: list[Counter]) -> list[tuple[int, int]]:
        """(held, used + held after) per counter, or Refused naming the first that failed."""
        now = time.time()
        with self.lock:
            if now >= self.next_sweep:
                self._sweep(now)
            slots = [self.values.get(c.key) for c in counters]
            for i, (c, slot) in enumerate(zip(counters, slots)):
                current = slot[0] + slot[1] if slot else 0
                if c.limit is not None and current + c.need > c.limit:
                    raise Refused(i, current)
            out = []
            for c, slot in zip(counters, slots):
                if slot is None:
                    slot = self.values[c.key] = [0, 0, now + c.ttl if c.ttl > 0 else float("inf")]
                current = slot[0] + slot[1]
                hold = c.hold if c.limit is None else max(0, min(c.hold, c.limit - current - c.use))
                slot[0] += c.use
                slot[1] += hold
                out.append((hold, slot[0] + slot[1]))
            return out

    async def settle(self, items: list[tuple[str, int, int, int]]):
        """(key, held, used, ttl) each: the reservation released, what was used counted."""
        now = time.time()
        with self.lock:
            for key, held, used, ttl in items:
                slot = self.values.setdefault(key, [0, 0, now + ttl if ttl > 0 else float("inf")])
                slot[0] += used
                slot[1] = max(0, slot[1] - held)

    def used(self, keys: list[str]) -> list[int]:
        with self.lock:
            return [self.values[k][0] if k in self.values else 0 for k in keys]

    def _sweep(self, now: float):
        for key in [k for k, v in self.values.items() if v[2] <= now]:
            del self.values[key]
        self.next_sweep = now + 60

    def status(self) -> dict:
        return {"ok": True, "backend": self.backend}


# KEYS: the counters; ARGV: for each, limit (-1: none), need, hold, use, ttl. Answers
# {0, index, current} when one refuses (nothing changed), else {1, held1, total1, held2, …}.
_RESERVE = """
local n = #KEYS
local cur = {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'used', 'held')
  cur[i] = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
  local limit = tonumber(ARGV[5 * i - 4])
  if limit >= 0 and cur[i] + tonumber(ARGV[5 * i - 3]) > limit then
    return {0, i - 1, cur[i]}
  end
end
local out = {1}
for i = 1, n do
  local limit = tonumber(ARGV[5 * i - 4])
  local hold = tonumber(ARGV[5 * i - 2])
  local use = tonumber(ARGV[5 * i - 1])
  if limit >= 0 then hold = math.max(0, math.min(hold, limit - cur[i] - use)) end
  if use ~= 0 then redis.call('HINCRBY', KEYS[i], 'used', string.format('%d', use)) end
  if hold ~= 0 then redis.call('HINCRBY', KEYS[i], 'held', string.format('%d', hold)) end
  if tonumber(ARGV[5 * i]) > 0 then redis.call('EXPIRE', KEYS[i], ARGV[5 * i]) end
  out[#out + 1] = hold
  out[#out + 1] = cur[i] + use + hold
end
return out
"""
# KEYS: the counters; ARGV: for each, held, used, ttl.
_SETTLE = """
for i = 1, #KEYS do
  local held = tonumber(ARGV[3 * i - 2])
  if held ~= 0 then
    local left = redis.call('HINCRBY', KEYS[i], 'held', string.format('%d', -held))
    if left < 0 then redis.call('HSET', KEYS[i], 'held', 0) end
  end
  local used = tonumber(ARGV[3 * i - 1])
  if used ~= 0 then redis.call('HINCRBY', KEYS[i], 'used', string.format('%d', used)) end
  if tonumber(ARGV[3 * i]) > 0 and redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ARGV[3 * i]) end
end
"""


class RedisCounters(SyncRedis):
    """Counters shared by every gateway process on one Redis."""

    backend = "redis"

    def __init__(self, url: str):
        self.url = url
        self.down_until = 0.0
        self.last_error = ""
        self._async: dict = {}  # event loop -> (client, semaphore, reserve, settle)
        self._sync = None

    def _scripts(self):
        return loop_client(self._async, self.url, SOCKET_TIMEOUT_S, CONNECT_TIMEOUT_S, (_RESERVE, _SETTLE))[1:]

    def _check(self):
        if time.monotonic() < self.down_until:
            raise CountersDown("Redis is backing off after a failure")

    def _down(self, exc: Exception):
        if time.monotonic() >= self.down_until:
            log.warning("Limits: Redis unavailable (%s); for %ss limits are %s", type(exc).__name__, BACKOFF_S,
                        "counted in this process only" if _fail_open() else "refusing requests (503)")
        self.down_until = time.monotonic() + BACKOFF_S
        self.last_error = type(exc).__name__
        raise CountersDown(str(exc)) from exc

    async def reserve(self, counters: list[Counter]) -> list[tuple[int, int]]:
        self._check()
        args = []
        for c in counters:
            args += [-1 if c.limit is None else c.limit, c.need, c.hold, c.use, c.ttl]
        turns, reserve, _ = self._scripts()
        try:
            async with turns:
                self._check()  # it may have failed while this call waited its turn
                answer = await reserve(keys=[c.key for c in counters], args=args)
        except CountersDown:
            raise
        except Exception as exc:  # redis errors, timeouts, OS errors: all mean no shared counters now
            self._down(exc)
        if answer[0] == 0:
            raise Refused(int(answer[1]), int(answer[2]))
        return [(int(answer[i]), int(answer[i + 1])) for i in range(1, len(answer), 2)]

    async def settle(self, items: list[tuple[str, int, int, int]]):
        self._check()
        args = []
        for _, held, used, ttl in items:
            args += [held, used, ttl]
        turns, _, settle = self._scripts()
        try:
            async with turns:
                self._check()
                await settle(keys=[item[0] for item in items], args=args)
        except CountersDown:
            raise
        except Exception as exc:
            self._down(exc)

    def used(self, keys: list[str]) -> list[int]:
        """Settled amounts (management API, off the request path)."""
        if not keys:
            return []
        pipe = self.sync().pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "used")
        return [int(v or 0) for v in pipe.execute()]



def _fail_open() -> bool:
    from django.conf import settings

    return settings.SMARTFLOW_LIMITS_FAIL == "open"


_current: tuple | None = None
local = MemoryCounters()  # this process's own: without Redis, and while Redis is down (fail open)


def current():
    """The shared counters for the current settings (Redis when REDIS_URL is set)."""
    global _current
    from django.conf import settings

    if _current is None or _current[0] != settings.REDIS_URL:
        url = settings.REDIS_URL
        _current = (url, RedisCounters(url) if url else local)
    return _current[1]
