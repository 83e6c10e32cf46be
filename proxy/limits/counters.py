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
from collections import deque
from functools import partial

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from proxy.limits.buckets import bucket_script
from proxy.limits.slices import SYNC_S, Admitted, Slices
from proxy.redis_pipe import Script, in_background, lost_script, loop_pipe
from proxy.redis_sync import SyncRedis

log = logging.getLogger(__name__)
BACKOFF_S = 5.0


MAX_AMOUNT = 2**53
MAX_SEEN = 100_000  # last-known spends kept per process
MAX_PENDING = 10_000  # settlements kept for Redis while it is down


_life: int | None = None


def hold_life() -> int:
    """Seconds a Redis hold outlives its request at most: the longest a request may run (a routing
    policy's attempts together, or one upstream call) plus 5 minutes. A process killed mid-request
    leaves its holds this long; a stream that runs longer loses its hold (its use still counts).
    Read from the settings once (twice a request, each read went through Django's lazy object)."""
    global _life
    if _life is None:
        _life = int(max(settings.SMARTFLOW_ROUTING_TIMEOUT, settings.SMARTFLOW_UPSTREAM_TIMEOUT)) + 300
    return _life


@receiver(setting_changed)
def _settings_changed(setting, **_):
    global _life, _current
    if setting in ("SMARTFLOW_ROUTING_TIMEOUT", "SMARTFLOW_UPSTREAM_TIMEOUT"):
        _life = None
    elif setting == "REDIS_URL" and _current is not None and _current[0] != settings.REDIS_URL:
        _current = None


class Counter:
    """One counter of a request: key, limit (None: counted, never refused: a team's spend without a
    cap), need (refused when used + held + need > limit), hold (reserved until settled, clamped to
    what the limit leaves), use (counted at once: a request against rpm), ttl (seconds the key
    outlives its window). Amounts are capped at MAX_AMOUNT: a client's max_tokens of 10**30 must
    not break the arithmetic. (A plain class: six are made per request.)"""

    __slots__ = ("key", "limit", "need", "hold", "use", "ttl")

    def __init__(self, key: str, limit: int | None, need: int, hold: int, use: int, ttl: int):
        self.key, self.use, self.ttl = key, use, ttl
        self.limit = limit if limit is None or limit < MAX_AMOUNT else MAX_AMOUNT
        self.need = need if need < MAX_AMOUNT else MAX_AMOUNT
        self.hold = hold if hold < MAX_AMOUNT else MAX_AMOUNT

    def __eq__(self, other):
        return isinstance(other, Counter) and all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self):
        return f"Counter({', '.join(repr(getattr(self, f)) for f in self.__slots__)})"


class Refused(Exception):
    def __init__(self, index: int, current: int, used: int = 0, sliced: int = 0):
        super().__init__(f"counter {index} refused at {current}")
        self.index, self.current, self.used = index, current, used  # used: settled, without holds
        self.sliced = sliced  # processes' slices may hold some of it: asked back, soon free (ask again)


class CountersDown(Exception):
    """Redis cannot answer now (or is backing off after a failure)."""


class MemoryCounters:
    """One process's counters (no Redis, or Redis down and failing open)."""

    backend = "in-process"

    def __init__(self):
        self.values: dict[str, list] = {}  # key -> [used, held, expires]
        self.lock = threading.Lock()
        self.next_sweep = 0.0

    async def reserve(self, counters: list[Counter], hold_id: str = "") -> list[tuple[int, int]]:
        """(held, used + held after) per counter, or Refused naming the first that failed. (Holds
        here end with the process: no expiry, hold_id unused.)"""
        now = time.time()
        with self.lock:
            if now >= self.next_sweep:
                self._sweep(now)
            slots = [self.values.get(c.key) for c in counters]
            for i, (c, slot) in enumerate(zip(counters, slots)):
                current = slot[0] + slot[1] if slot else 0
                if c.limit is not None and current + c.need > c.limit:
                    raise Refused(i, current, slot[0] if slot else 0)
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

    def start(self, counters: list[Counter], hold_id: str = ""):
        return None  # in process, reserve() takes no time to answer: nothing to go on with meanwhile

    async def settle(self, items: list[tuple[str, int, int, int]], hold_id: str = "", tracked: int = 0):
        """(key, held, used, ttl) each: the reservation released, what was used counted."""
        self.apply(items)

    def apply(self, items: list[tuple[str, int, int, int]]):
        now = time.time()
        with self.lock:
            for key, held, used, ttl in items:
                slot = self.values.setdefault(key, [0, 0, now + ttl if ttl > 0 else float("inf")])
                slot[0] += used
                slot[1] = max(0, slot[1] - held)

    def seed(self, floors: dict[str, int], ttls: dict[str, int]):
        """Settled amounts at least these (the last Redis answered, while it is down)."""
        now = time.time()
        with self.lock:
            for key, used in floors.items():
                ttl = ttls[key]
                slot = self.values.setdefault(key, [0, 0, now + ttl if ttl > 0 else float("inf")])
                slot[0] = max(slot[0], used)

    def used(self, keys: list[str]) -> list[int]:
        with self.lock:
            return [self.values[k][0] if k in self.values else 0 for k in keys]

    def _sweep(self, now: float):
        for key in [k for k, v in self.values.items() if v[2] <= now]:
            del self.values[key]
        self.next_sweep = now + 60

    def status(self) -> dict:
        return {"ok": True, "backend": self.backend}


# The holds' buckets: buckets.py. h:<id> records the request's bucket until it is settled, so a
# settlement retried after a lost answer counts once; it is kept once per request, in its anchor: of
# the counters it holds on, the one kept longest (a budget's, ttl 0 being forever; the first on a tie),
# which reserve and settle pick alike from the same ttls. Holds without an id (tests, the API's
# symmetry) are in the field 'held'. Every redis.call costs about a microsecond of Redis' one thread
# on top of its command, so each is counted: a request with six counters makes 14 here, 11 settling.
# KEYS: the counters; ARGV: for each counter limit (-1: none), need, hold, use, ttl; then the hold id
# ('': none) and the holds' lifetime. Answers {0, index, current, used, 1 if slices may hold some of
# it} when one refuses (nothing changed but the slices asked back), else {1, held1, total1, used1, ...}.
_RESERVE = bucket_script("""
local n = #KEYS
local id = ARGV[5 * n + 1]
local seconds, bucket = bucket_now(tonumber(ARGV[5 * n + 2]))
local fields = counted(bucket)
fields[9] = 'S'
local cur, used, fresh, got = {}, {}, {}, {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], unpack(fields))
  used[i] = tonumber(v[1]) or 0
  cur[i] = used[i] + held_in(v)
  fresh[i] = not v[1]
  got[i] = v
  local limit = tonumber(ARGV[5 * i - 4])
  if limit >= 0 and cur[i] + tonumber(ARGV[5 * i - 3]) > limit then
    local sliced = 0  -- a process' slice may hold some of it (slices.py): asked back, and ask again
    if v[9] and tonumber(v[9]) >= bucket - 4 then
      sliced = 1
      redis.call('HSET', KEYS[i], 'r', seconds)
    end
    return {0, i - 1, cur[i], used[i], sliced}
  end
end
local out, anchor, kept = {1}, nil, -1
for i = 1, n do
  local limit = tonumber(ARGV[5 * i - 4])
  local asked = tonumber(ARGV[5 * i - 2])
  local use = tonumber(ARGV[5 * i - 1])
  local ttl = tonumber(ARGV[5 * i])
  local hold = asked
  if limit >= 0 then hold = math.max(0, math.min(hold, limit - cur[i] - use)) end
  if use ~= 0 or fresh[i] then redis.call('HINCRBY', KEYS[i], 'used', string.format('%d', use)) end
  if id == '' then
    if hold ~= 0 then redis.call('HINCRBY', KEYS[i], 'held', string.format('%d', hold)) end
  elseif asked > 0 then
    if hold ~= 0 then hold_in(KEYS[i], got[i], bucket, hold) end
    local life = ttl > 0 and ttl or math.huge
    if life > kept then anchor, kept = i, life end
  end
  if fresh[i] and ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
  out[#out + 1] = hold
  out[#out + 1] = cur[i] + use + hold
  out[#out + 1] = used[i] + use
end
if anchor then redis.call('HSET', KEYS[anchor], 'h:' .. id, bucket) end
return out
""")
# KEYS: the counters; ARGV: for each, held, used, ttl; then the hold id, how many of the first counters
# it reserved and the holds' lifetime. There the hold's record in the anchor decides, so a settlement
# retried after a lost answer counts once: gone (settled already) nothing; its bucket too old (no
# longer counted) the use only; else the holds are released and the use counted. A bucket's field
# left at 0 goes when its bucket no longer counts. The others (spend counted without a reservation,
# holds without an id) as told; a key the use made is given its ttl.
_SETTLE = bucket_script("""
local n = #KEYS
local id, tracked = ARGV[3 * n + 1], tonumber(ARGV[3 * n + 2])
local count, at = true, nil
if tracked > 0 then
  local anchor, kept = 1, -1
  for i = 1, tracked do
    local ttl = tonumber(ARGV[3 * i])
    local life = ttl > 0 and ttl or math.huge
    if life > kept then anchor, kept = i, life end
  end
  at = redis.call('HGET', KEYS[anchor], 'h:' .. id)
  count = at ~= false
  if count then
    redis.call('HDEL', KEYS[anchor], 'h:' .. id)
    local _, bucket = bucket_now(tonumber(ARGV[3 * n + 3]))
    at = tonumber(at)
    if at < bucket - 4 then at = nil end  -- no longer counted: nothing to release
  end
end
for i = 1, n do
  local held = tonumber(ARGV[3 * i - 2])
  local used = tonumber(ARGV[3 * i - 1])
  if i <= tracked then
    if count then
      if held ~= 0 and at then redis.call('HINCRBY', KEYS[i], 'b:' .. at, string.format('%d', -held)) end
      if used ~= 0 then redis.call('HINCRBY', KEYS[i], 'used', string.format('%d', used)) end
    end
  else
    if held ~= 0 and redis.call('HINCRBY', KEYS[i], 'held', string.format('%d', -held)) < 0 then
      redis.call('HSET', KEYS[i], 'held', 0)
    end
    if used ~= 0 and redis.call('HINCRBY', KEYS[i], 'used', string.format('%d', used)) == used
        and tonumber(ARGV[3 * i]) > 0 then
      redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
    end
  end
end
""")


class RedisCounters(SyncRedis):
    """Counters shared by every gateway process on one Redis."""

    backend = "redis"

    def __init__(self, url: str):
        self.url = url
        self.down_until = 0.0
        self.last_error = self.failure = ""
        self._sync = None
        self.seen: dict[str, int] = {}  # limited counter -> the settled amount Redis last answered
        self.pending: deque = deque(maxlen=MAX_PENDING)  # settlements waiting for Redis to answer again
        self.retrying: asyncio.Task | None = None
        self.slices = Slices()  # a busy key's requests admitted here from a share held on Redis

    def _pipe(self):
        return loop_pipe(self.url)

    def _check(self):
        if time.monotonic() < self.down_until:
            raise CountersDown("Redis is backing off after a failure")

    def _down(self, exc: Exception):
        if time.monotonic() >= self.down_until:
            log.warning("Limits: Redis unavailable (%s: %s); for %ss limits are %s", type(exc).__name__, exc, BACKOFF_S,
                        "counted in this process only" if _fail_open() else "refusing requests (503)")
        self.down_until = time.monotonic() + BACKOFF_S
        self.last_error, self.failure = type(exc).__name__, str(exc)[:200]
        raise CountersDown(str(exc)) from exc

    async def reserve(self, counters: list[Counter], hold_id: str = "", again: bool = True) -> list[tuple[int, int]]:
        """As MemoryCounters.reserve; with a hold id the holds stop counting 1 to 1.25 hold_life()s
        later unless settled first (a process killed mid-request frees its holds)."""
        self._check()
        try:
            answer = await self._pipe().script(_RESERVE, [c.key for c in counters], _reserve_args(counters, hold_id))
        except Exception as exc:  # redis errors, timeouts, OS errors: all mean no shared counters now
            self._down(exc)
        return await self._decided(counters, answer, hold_id, again)

    async def _decided(self, counters: list[Counter], answer: list[int], hold_id: str, again: bool = True):
        """_outcome(); a refusal while slices may hold part of the limit asked once more."""
        try:
            return self._outcome(counters, answer)
        except Refused as refused:
            if not (again and refused.sliced):
                raise
        return await self._after_slices(counters, hold_id)

    async def _after_slices(self, counters: list[Counter], hold_id: str):
        """Refused while processes' slices may hold part of the limit: the refusal asked them back,
        and their next reports give back what they do not use, so the request asks once more after
        two reports (a refusal is then exact however the requests were spread over processes). A
        request cancelled while Redis answers this second ask gives back what it made."""
        await asyncio.sleep(2 * SYNC_S)
        self._check()
        answer = self._pipe().start(_RESERVE, [c.key for c in counters], _reserve_args(counters, hold_id))
        if answer is None:
            return await self.reserve(counters, hold_id, again=False)
        try:
            reply = await asyncio.shield(answer)
        except asyncio.CancelledError:
            answer.add_done_callback(partial(self._give_back, counters, hold_id))
            raise
        except Exception as exc:
            self._down(exc)
        return self._outcome(counters, reply)

    def _give_back(self, counters: list[Counter], hold_id: str, answer: asyncio.Future):
        results = self.outcome(counters, answer)
        if results is None:
            return
        items = [(c.key, held, 0, c.ttl) for c, (held, _) in zip(counters, results) if c.hold > 0]
        if items:
            settle_soon(self, items, hold_id, len(items))

    def start(self, counters: list[Counter], hold_id: str = "") -> asyncio.Future | None:
        """reserve() begun and not awaited: the future of Redis' answer, for finish(). The request
        goes on with its work while Redis answers; a busy key's request its slices cover has its
        answer at once (slices.py). None when it cannot begin so (backing off, no connection yet,
        the script not loaded on it): then reserve()."""
        slices = self.slices
        answer = slices.admit(counters, hold_id) if hold_id else None
        if answer is not None:
            return answer
        if time.monotonic() < self.down_until:
            return None
        if slices.note(counters) and not slices.running():
            slices.task = in_background(slices.run(self._pipe, hold_life))
        return self._pipe().start(_RESERVE, [c.key for c in counters], _reserve_args(counters, hold_id))

    async def finish(self, counters: list[Counter], answer: asyncio.Future, hold_id: str = "") -> list[tuple[int, int]]:
        """What reserve() returns or raises, from start()'s future (made again whole by the pipe if
        Redis lost the script). The future is shielded: a request cancelled while it waits leaves the
        answer to whoever settles its holds."""
        if type(answer) is Admitted:
            self._saw(counters, answer.used)
            return answer.results
        try:
            reply = answer.result() if answer.done() else await asyncio.shield(answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._down(exc)
        return await self._decided(counters, reply, hold_id)

    def outcome(self, counters: list[Counter], answer: asyncio.Future) -> list[tuple[int, int]] | None:
        """The holds start()'s finished future made, without raising: None when it made none (refused,
        failed or cancelled)."""
        if type(answer) is Admitted:
            return answer.results
        if answer.cancelled() or answer.exception() is not None or answer.result()[0] == 0:
            return None
        return self._outcome(counters, answer.result())

    def _outcome(self, counters: list[Counter], answer: list[int]) -> list[tuple[int, int]]:
        if answer[0] == 0:
            index, current, used, sliced = answer[1:5]
            self._saw((counters[index],), (used,))
            raise Refused(index, current, used, sliced)
        self._saw(counters, answer[3::3])
        return list(zip(answer[1::3], answer[2::3]))

    def _saw(self, counters, used):
        seen = self.seen
        if len(seen) >= MAX_SEEN:  # keys carry their period: old ones are dropped wholesale
            seen.clear()
        for counter, amount in zip(counters, used):
            if counter.limit is not None:
                seen[counter.key] = amount

    def last_used(self, keys: list[str]) -> dict[str, int]:
        """The settled amounts this process last read from Redis, of those keys it has seen."""
        return {key: self.seen[key] for key in keys if key in self.seen}

    async def settle(self, items: list[tuple[str, int, int, int]], hold_id: str = "", tracked: int = 0):
        """As MemoryCounters.settle; the first `tracked` items reserved under hold_id count once
        however often this is retried."""
        if self.slices.owns(hold_id):
            items, hold_id, tracked = self._settle_here(hold_id, items), "", 0
            if not items:
                return
        self._check()
        try:
            await self._pipe().script(_SETTLE, [item[0] for item in items], _settle_args(items, hold_id, tracked),
                                      lazy=True)
        except Exception as exc:
            self._down(exc)
        self._spent(items)

    def settle_soon(self, items: list[tuple[str, int, int, int]], hold_id: str = "", tracked: int = 0) -> bool:
        """settle() with nobody waiting for it: posted on the loop's connection (no task, future or
        timer per request) and its outcome handled when Redis answers: a failure is counted here and
        retried as settle_or_defer does. False, nothing done, when it cannot be posted now (backing
        off, no connection yet, the script not loaded on it): then settle_or_defer() on a task."""
        if self.slices.owns(hold_id):  # settled in its slices; the rest posted (or deferred) as any is
            rest = self._settle_here(hold_id, items)
            if rest:
                settle_soon(self, rest)
            return True
        if time.monotonic() < self.down_until:
            return False
        return self._pipe().post(_SETTLE, [item[0] for item in items], _settle_args(items, hold_id, tracked),
                                 self._settled, items, hold_id, tracked)

    def _settle_here(self, hold_id: str, items):
        """A request its slices admitted, settled in them (its use reported with theirs); what else
        it counted (spend without a limit) returned, for Redis, without a hold id."""
        here, rest = self.slices.settle(items, hold_id)
        self._spent(here)
        if self.slices.closed:  # drained: no reports any more but the one this makes
            in_background(self.slices.final(self._pipe, hold_life))
        return rest

    def _settled(self, answer, error, items, hold_id, tracked):
        if error is None:
            self._spent(items)
        elif lost_script(error):
            in_background(settle_or_defer(self, items, hold_id, tracked))
        else:
            try:
                self._down(error)
            except CountersDown:
                pass
            _count_here_and_defer(self, items, hold_id, tracked)

    def _spent(self, items):
        for key, _, used, _ in items:  # this process's own spend since Redis last answered
            if key in self.seen:
                self.seen[key] += used

    def defer(self, items: list[tuple[str, int, int, int]], hold_id: str = "", tracked: int = 0):
        """A settlement Redis could not take now: retried off the request path once the back-off
        ends (at most MAX_PENDING waiting; past that the oldest is dropped, logged)."""
        if len(self.pending) == self.pending.maxlen:
            log.warning("Limits: %s settlements wait for Redis; the oldest is dropped", len(self.pending))
        self.pending.append((items, hold_id, tracked))
        if self.retrying is None or self.retrying.done():
            self.retrying = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self):
        while self.pending:
            await asyncio.sleep(max(0.05, self.down_until - time.monotonic()))
            while self.pending:
                try:
                    await self.settle(*self.pending[0])
                except CountersDown:
                    break
                except Exception:
                    log.exception("limits: a deferred settlement failed")
                self.pending.popleft()

    def used(self, keys: list[str]) -> list[int]:
        """Settled amounts (management API, off the request path)."""
        if not keys:
            return []
        pipe = self.sync().pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "used")
        return [int(v or 0) for v in pipe.execute()]



def _reserve_args(counters: list[Counter], hold_id: str) -> list:
    args = []
    for c in counters:
        args += [-1 if c.limit is None else c.limit, c.need, c.hold, c.use, c.ttl]
    args += [hold_id, hold_life()]
    return args


def _settle_args(items, hold_id: str, tracked: int) -> list:
    args = []
    for _, held, used, ttl in items:
        args += [held, used, ttl]
    args += [hold_id, tracked if hold_id else 0, hold_life()]
    return args


def settle_soon(backend, items: list[tuple[str, int, int, int]], hold_id: str = "", tracked: int = 0):
    """A request's settlement, off its path: posted to Redis when it can be, else on a task."""
    if backend is local or not backend.settle_soon(items, hold_id, tracked):
        in_background(settle_or_defer(backend, items, hold_id, tracked))


async def settle_or_defer(backend, items: list[tuple[str, int, int, int]], hold_id: str = "", tracked: int = 0):
    """Settles on backend. Served in process while Redis was down: counted here, and its spend is
    Redis' too (deferred). Redis failing now: counted here meanwhile, and retried against Redis
    once it answers again."""
    shared = current()
    try:
        if backend is local:
            local.apply(items)
            spent = [(key, 0, amount, ttl) for key, _, amount, ttl in items if amount]
            if spent and shared is not local:
                shared.defer(spent)
            return
        await backend.settle(items, hold_id, tracked)
    except CountersDown:
        _count_here_and_defer(backend, items, hold_id, tracked)
    except Exception:
        log.exception("limits: settling a request failed")


def _count_here_and_defer(backend, items, hold_id, tracked):
    local.apply([(key, 0, amount, ttl) for key, _, amount, ttl in items])
    backend.defer(items, hold_id, tracked)


def _fail_open() -> bool:
    return settings.SMARTFLOW_LIMITS_FAIL == "open"


_current: tuple | None = None
local = MemoryCounters()  # this process's own: without Redis, and while Redis is down (fail open)


async def drain():
    """At shutdown: the shared counters' slices reported and given back (1 s at most)."""
    backend = _current[1] if _current else None
    if isinstance(backend, RedisCounters) and (backend.slices.table or backend.slices.dormant):
        try:
            await asyncio.wait_for(backend.slices.drain(backend._pipe, hold_life), 1.0)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning("Limits: Redis did not take the slices' last report; their holds expire by themselves")


def current():
    """The shared counters for the current settings (Redis when REDIS_URL is set; made again when
    the setting changes, not read per request)."""
    global _current
    if _current is None:
        url = settings.REDIS_URL
        _current = (url, RedisCounters(url) if url else local)
    return _current[1]
