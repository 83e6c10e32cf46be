"""The circuit breaker per target (provider/model): 5 failover conditions in 30 s open it for
30 s, then one request probes it while the others skip it; a failed probe opens it again.

With REDIS_URL the state lives in Redis (one Lua script per transition, atomic across
processes). The request path reads a local mirror of which circuits are open, refreshed in
the background at most every SYNC_S, so a request on a healthy target makes no Redis round
trip; only failures and probe elections go to Redis. Without Redis it lives in this process.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from django.conf import settings

log = logging.getLogger(__name__)
THRESHOLD = 5  # failures ...
WINDOW_S = 30.0  # ... within this many seconds open the circuit ...
OPEN_S = 30.0  # ... for this long
PROBE_S = 60.0  # a probe that never reports back frees the circuit for another probe after this
SYNC_S = 1.0  # how stale the Redis mirror may get
REDIS_TIMEOUT_S = 0.25

CLOSED, OPEN, PROBE = "closed", "open", "probe"

# KEYS[1] the circuit's hash, KEYS[2] its failure times; ARGV now, threshold, window, open seconds.
_FAIL = """
local now = tonumber(ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if redis.call('HGET', KEYS[1], 'probing') == '1' then
  open_until = now + tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'open_until', open_until, 'probing', '0')
  redis.call('DEL', KEYS[2])
elseif open_until <= now then
  redis.call('ZADD', KEYS[2], now, ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
  redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[3])) + 1)
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
    open_until = now + tonumber(ARGV[4])
    redis.call('HSET', KEYS[1], 'open_until', open_until, 'probing', '0')
    redis.call('DEL', KEYS[2])
  end
end
redis.call('EXPIRE', KEYS[1], 3600)
return tostring(open_until)
"""
# KEYS[1] the circuit's hash; ARGV now, probe timeout. 0: skip it, 1: closed, 2: this caller probes.
_CLAIM = """
local now = tonumber(ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until == 0 then return 1 end
if open_until > now then return 0 end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if redis.call('HGET', KEYS[1], 'probing') == '1' and probe_until > now then return 0 end
redis.call('HSET', KEYS[1], 'probing', '1', 'probe_until', now + tonumber(ARGV[2]))
return 2
"""


class Circuit:
    __slots__ = ("failures", "open_until", "probing", "probe_until")

    def __init__(self):
        self.failures: deque[float] = deque()
        self.open_until = 0.0
        self.probing = False
        self.probe_until = 0.0


class MemoryBreaker:
    """In this process only (no Redis)."""

    backend = "memory"

    def __init__(self):
        self.circuits: dict[str, Circuit] = {}

    async def check(self, key: str) -> str:
        circuit = self.circuits.get(key)
        if circuit is None or not circuit.open_until:
            return CLOSED
        now = time.time()
        if circuit.open_until > now or (circuit.probing and circuit.probe_until > now):
            return OPEN
        circuit.probing, circuit.probe_until = True, now + PROBE_S
        return PROBE

    async def failed(self, key: str) -> None:
        now = time.time()
        circuit = self.circuits.setdefault(key, Circuit())
        if circuit.probing:
            self._open(circuit, now)
        elif circuit.open_until <= now:
            circuit.failures.append(now)
            while circuit.failures and circuit.failures[0] <= now - WINDOW_S:
                circuit.failures.popleft()
            if len(circuit.failures) >= THRESHOLD:
                self._open(circuit, now)
        if len(self.circuits) > 10_000:  # targets come from policies: bounded, but never unbounded
            self.circuits.clear()

    @staticmethod
    def _open(circuit: Circuit, now: float):
        circuit.open_until, circuit.probing = now + OPEN_S, False
        circuit.failures.clear()

    async def succeeded(self, key: str) -> None:
        """Called after a probe succeeded: the circuit closes."""
        self.circuits.pop(key, None)

    def open_circuits(self) -> list[str]:
        now = time.time()
        return [key for key, c in self.circuits.items() if c.open_until > now or c.probing]

    def reset(self):
        self.circuits.clear()


class RedisBreaker:
    backend = "redis"

    def __init__(self, url: str, prefix: str):
        self.url, self.prefix = url, prefix
        self.known = f"{prefix}:breakers"
        self.mirror: dict[str, float] = {}  # key -> open_until, as last read from Redis
        self.synced = 0.0
        self._sync_task: asyncio.Task | None = None
        self._clients: dict = {}  # event loop -> (client, fail script, claim script)
        self._sync = None

    def _redis(self):
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(self.url, socket_timeout=REDIS_TIMEOUT_S,
                                             socket_connect_timeout=REDIS_TIMEOUT_S, retry_on_timeout=False)
            found = self._clients[loop] = (client, client.register_script(_FAIL), client.register_script(_CLAIM))
        return found

    def circuit(self, key: str) -> str:
        return f"{self.prefix}:breaker:{key}"

    async def check(self, key: str) -> str:
        if time.monotonic() - self.synced > SYNC_S and (self._sync_task is None or self._sync_task.done()):
            self._sync_task = asyncio.ensure_future(self._refresh())
            if not self.synced:  # a process's first look waits for it: it knows nothing yet
                await asyncio.shield(self._sync_task)
        open_until = self.mirror.get(key, 0.0)
        if not open_until:
            return CLOSED
        if open_until > time.time():
            return OPEN
        try:  # its time is up: one caller across the processes probes it
            answer = await self._redis()[2](keys=[self.circuit(key)], args=[time.time(), PROBE_S])
        except Exception as exc:
            log.warning("routing: Redis unavailable for the circuit breaker (%s)", type(exc).__name__)
            return CLOSED
        if answer == 1:
            self.mirror.pop(key, None)
        return {0: OPEN, 1: CLOSED, 2: PROBE}[int(answer)]

    async def failed(self, key: str) -> None:
        client, fail, _ = self._redis()
        now = time.time()
        try:
            async with client.pipeline(transaction=False) as pipe:
                await fail(keys=[self.circuit(key), self.circuit(key) + ":f"],
                           args=[now, THRESHOLD, WINDOW_S, OPEN_S, f"{now}:{id(pipe)}"], client=pipe)
                pipe.sadd(self.known, key)
                open_until, _ = await pipe.execute()
        except Exception as exc:
            log.warning("routing: Redis unavailable for the circuit breaker (%s)", type(exc).__name__)
            return
        if float(open_until) > now:
            self.mirror[key] = float(open_until)

    async def succeeded(self, key: str) -> None:
        try:
            await self._redis()[0].delete(self.circuit(key), self.circuit(key) + ":f")
        except Exception as exc:
            log.warning("routing: Redis unavailable for the circuit breaker (%s)", type(exc).__name__)
        self.mirror.pop(key, None)

    async def _refresh(self):
        """The mirror from Redis: every circuit a failure was ever recorded for (one round trip)."""
        self.synced = time.monotonic()
        client = self._redis()[0]
        try:
            keys = [k.decode() for k in await client.smembers(self.known)]
            values = await client.eval(
                "local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('HGET', k, 'open_until') or '0' "
                "end return out", len(keys), *map(self.circuit, keys)) if keys else []
        except Exception as exc:
            log.warning("routing: Redis unavailable for the circuit breaker (%s)", type(exc).__name__)
            return
        self.mirror = {k: float(v) for k, v in zip(keys, values) if float(v)}

    def open_circuits(self) -> list[str]:
        """For /metrics (sync, off the request path)."""
        if self._sync is None:
            import redis

            self._sync = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        now = time.time()
        keys = [k.decode() for k in self._sync.smembers(self.known)]
        out = []
        for key in keys:
            state = self._sync.hmget(self.circuit(key), "open_until", "probing")
            if float(state[0] or 0) > now or state[1] == b"1":
                out.append(key)
        return out

    def reset(self):
        self.open_circuits()  # the sync client
        for key in self._sync.smembers(self.known):
            self._sync.delete(self.circuit(key.decode()), self.circuit(key.decode()) + ":f")
        self._sync.delete(self.known)
        self.mirror, self.synced = {}, 0.0


_current: tuple | None = None


def current():
    """The breaker for the current settings (one per process)."""
    global _current
    config = (settings.REDIS_URL, settings.SMARTFLOW_CACHE_PREFIX)
    if _current is None or _current[0] != config:
        url, prefix = config
        _current = (config, RedisBreaker(url, f"{prefix}:routing") if url else MemoryBreaker())
    return _current[1]
