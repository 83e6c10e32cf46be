"""Where cache entries live: in this process (LRU bounded by bytes) or in Redis (shared, TTL in Redis).

The request path uses the async get/put (one Redis round trip each); stats() and clear() are for
the management API and /metrics (sync, off the request path). A Redis that fails is remembered
for BACKOFF_S: meanwhile get/put raise StoreDown at once, so requests go on uncached quickly.
"""
import logging
import threading
import time
from collections import OrderedDict

from django.conf import settings

from proxy.redis_pipe import Script, in_background, lost_script, loop_pipe
from proxy.redis_sync import SyncRedis

log = logging.getLogger(__name__)
BACKOFF_S = 5.0


class StoreDown(Exception):
    """The store cannot answer now: the request goes on uncached (BYPASS)."""


class MemoryStore:
    backend = "memory"

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()  # the management API reads from its own threads

    async def get(self, key: str) -> bytes | None:
        with self.lock:
            found = self.entries.get(key)
            if found is None:
                return None
            if found[0] <= time.time():
                self._drop(key)
                return None
            self.entries.move_to_end(key)
            return found[1]

    async def put(self, key: str, value: bytes, ttl: int):
        if len(value) > self.max_bytes:
            return
        with self.lock:
            if key in self.entries:
                self._drop(key)
            now = time.time()
            self.entries[key] = (now + ttl, value)
            self.bytes += len(value)
            while self.bytes > self.max_bytes:  # least recently used first
                self._drop(next(iter(self.entries)))
            # Expired entries go when looked up, pushed out, or (here) once they reach the LRU end.
            while self.entries and next(iter(self.entries.values()))[0] <= now:
                self._drop(next(iter(self.entries)))

    def _drop(self, key: str):
        self.bytes -= len(self.entries.pop(key)[1])

    def stats(self) -> dict:
        # O(1), so a scrape never holds the lock the request path takes: what the process holds,
        # expired entries not yet dropped included.
        return {"entries": len(self.entries), "bytes": self.bytes, "ok": True}

    def clear(self):
        with self.lock:
            self.entries.clear()
            self.bytes = 0

    def status(self) -> dict:
        return {"ok": True, "backend": self.backend}


# SET with EX, and the entry's size and expiry in a hash and a sorted set (our own entries and
# bytes, not Redis' whole used_memory), in one atomic round trip.
_PUT = Script("""
local old = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], string.len(ARGV[2]))
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('INCRBY', KEYS[4], string.len(ARGV[2]) - (tonumber(old) or 0))
""")
# Forget the sizes of entries Redis has expired (at most 10,000 a call: Redis runs one script at a
# time); answer (entries, bytes).
_STATS = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 10000)
for i, k in ipairs(gone) do
  local size = redis.call('HGET', KEYS[1], k)
  if size then redis.call('DECRBY', KEYS[3], size) end
  redis.call('HDEL', KEYS[1], k)
  redis.call('ZREM', KEYS[2], k)
end
return {redis.call('HLEN', KEYS[1]), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""


class RedisStore(SyncRedis):
    backend = "redis"

    def __init__(self, url: str, prefix: str):
        self.url, self.prefix = url, prefix
        self.sizes, self.expiry, self.total = f"{prefix}:sizes", f"{prefix}:expiry", f"{prefix}:bytes"
        self.down_until = 0.0
        self.last_error = ""
        self._sync = None

    def entry(self, key: str) -> str:
        return f"{self.prefix}:e:{key}"

    def _pipe(self):
        return loop_pipe(self.url)

    def _down(self, exc: Exception):
        if time.monotonic() >= self.down_until:
            log.warning("MetaCache: Redis unavailable (%s); requests go on uncached for %ss",
                        type(exc).__name__, BACKOFF_S)
        self.down_until = time.monotonic() + BACKOFF_S
        self.last_error = type(exc).__name__
        raise StoreDown(str(exc)) from exc

    def _check(self):
        if time.monotonic() < self.down_until:
            raise StoreDown("Redis is backing off after a failure")

    def start_get(self, key: str):
        """The lookup sent now and awaited later (get(key, started)), when connected and not backing off."""
        pipe = self._pipe()
        if time.monotonic() < self.down_until or pipe.proto is None or pipe.proto.lost:
            return None
        started = pipe.send_now("GET", self.entry(key))
        started.add_done_callback(_retrieved)  # never awaited when an earlier policy refuses
        return started

    async def get(self, key: str, started=None) -> bytes | None:
        if started is None:
            self._check()
        try:
            return await (started if started is not None else self._pipe().call("GET", self.entry(key)))
        except Exception as exc:  # redis errors, timeouts, OS errors: all mean uncached
            self._down(exc)

    async def put(self, key: str, value: bytes, ttl: int):
        self._check()
        try:
            await self._pipe().script(_PUT, *self._put_args(key, value, ttl))
        except Exception as exc:
            self._down(exc)

    def post_put(self, key: str, value: bytes, ttl: int) -> bool:
        """put() with nobody awaiting it: posted with the next write on this loop's connection (so
        this process's next lookup, written after it, finds it). False, and nothing sent, when it
        cannot be posted now (backing off, not connected, the script not loaded): put() then."""
        if time.monotonic() < self.down_until:
            return False
        return self._pipe().post(_PUT, *self._put_args(key, value, ttl), self._posted, key, value, ttl)

    def _put_args(self, key: str, value: bytes, ttl: int) -> tuple[list, list]:
        return [self.entry(key), self.sizes, self.expiry, self.total], [key, value, ttl, time.time() + ttl]

    def _posted(self, answer, error, key, value, ttl):
        if error is None:
            return
        if lost_script(error):
            in_background(self._put_quietly(key, value, ttl))
            return
        try:
            self._down(error)
        except StoreDown:
            pass  # the answer went out; it is just not cached

    async def _put_quietly(self, key: str, value: bytes, ttl: int):
        try:
            await self.put(key, value, ttl)
        except StoreDown:
            pass

    def stats(self) -> dict:
        try:
            entries, size = self.sync().eval(_STATS, 3, self.sizes, self.expiry, self.total, time.time())
        except Exception as exc:
            return {"entries": 0, "bytes": 0, "ok": False, "error": type(exc).__name__}
        return {"entries": int(entries), "bytes": int(size), "ok": True}

    def clear(self):
        client = self.sync()
        keys = [k.decode() for k in client.hkeys(self.sizes)]
        for start in range(0, len(keys), 1000):
            client.delete(*(self.entry(k) for k in keys[start:start + 1000]))
        client.delete(self.sizes, self.expiry, self.total)


_current: tuple | None = None


def _retrieved(future):
    if not future.cancelled():
        future.exception()


def current():
    """The store for the current settings (one per process)."""
    global _current
    config = (settings.REDIS_URL, settings.SMARTFLOW_CACHE_PREFIX, settings.SMARTFLOW_CACHE_MAX_BYTES)
    if _current is None or _current[0] != config:
        url, prefix, max_bytes = config
        _current = (config, RedisStore(url, f"{prefix}:metacache") if url else MemoryStore(max_bytes))
    return _current[1]
