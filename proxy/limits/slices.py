"""Slices: a busy key's requests admitted in process from a share of its limits held on Redis.

Far from its limits, a key under load asks Redis for every request only to hear yes: a round trip
(~0.1 ms of waiting at c=1) and a script (~40 us of Redis' one thread) that decide nothing. So a
process whose key made at least MIN_REQUESTS requests in the last SYNC_S seconds holds a slice of
each of its counters on Redis (a hold like a request's, under the process's id, re-bucketed each
time so that it expires if the process dies) and admits the key's requests from it without asking;
every SYNC_S seconds one script call per process reports what the slices were used for (a
cumulative total, so a report repeated after a lost answer counts once) and sizes them again.

Never more than the limit: a slice is held on Redis before any request is admitted from it; a
request is admitted from slices only when all its counters' slices cover its whole reservation
(else it goes to Redis as before, which refuses); a slice is frozen while its report is out (what
Redis answers replaces it; unanswered, it covers only the requests in flight, which Redis holds
either way), and admits nothing once Redis may have let its hold expire. Exact at the limit: a slice
is granted only while at least half of the limit is left, at most 1/64 of what is left and twice
what the key used lately; a refusal while slices are held marks the key (the 'r' field), so that
every process's next report gives back what its slice does not use, and asks again after two
reports (RedisCounters._after_slices).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid

from proxy.limits.buckets import bucket_script

log = logging.getLogger(__name__)
SYNC_S = 0.05
MIN_REQUESTS = 8  # in one interval (160 a second): fewer are served one round trip each
MAX_LOCAL = 100_000  # requests admitted from slices and not settled yet (a leak would stop here)

# KEYS: the counters; ARGV: for each, limit, ttl, total (what this process used of it through its
# slice, ever), keep (its requests' holds in flight: held for it again, within what is left if its
# hold had expired), want (more asked for: a slice's size), unit (a request's amount: a slice
# smaller is not granted); then the process' id and the holds' lifetime. The slice's field s:<id> =
# "bucket:hold:total": the hold replaced where it is counted, the use added once (total minus the
# last total). 'S' is the latest bucket any slice of the key held in (a refusal asks again while
# one may be held), 'r' the time (s) a refusal asked slices back: for a second none is granted.
# Answers {hold, total held and used, used} each.
_SLICE = bucket_script("""
local n = #KEYS
local id = ARGV[6 * n + 1]
local seconds, bucket = bucket_now(tonumber(ARGV[6 * n + 2]))
seconds = tonumber(seconds)
local mine = 's:' .. id
local fields = counted(bucket)
fields[9], fields[10] = mine, 'r'
local out = {}
for i = 1, n do
  local key = KEYS[i]
  local limit, ttl = tonumber(ARGV[6 * i - 5]), tonumber(ARGV[6 * i - 4])
  local total, keep = tonumber(ARGV[6 * i - 3]), tonumber(ARGV[6 * i - 2])
  local want, unit = tonumber(ARGV[6 * i - 1]), tonumber(ARGV[6 * i])
  local v = redis.call('HMGET', key, unpack(fields))
  local used = tonumber(v[1]) or 0
  local held = held_in(v)
  local at, old, reported = 0, 0, 0
  if v[9] then
    local a, h, t = string.match(v[9], '^(%-?%d+):(%d+):(%d+)$')
    at, old, reported = tonumber(a), tonumber(h), tonumber(t)
  end
  if old > 0 and at >= bucket - 4 then held = held - old else old = 0 end  -- an expired hold counts no more
  local add = math.max(0, total - reported)
  used = used + add
  if old == 0 then keep = math.max(0, math.min(keep, limit - used - held)) end  -- held anew: what is left
  local left = limit - used - held - keep
  local grant = 0
  if want > 0 and 2 * left >= limit and not (v[10] and tonumber(v[10]) >= seconds - 1) then
    grant = math.min(want, math.floor(left / 64))
    if grant < unit then grant = 0 end
  end
  local hold = keep + grant
  if old > 0 then redis.call('HINCRBY', key, 'b:' .. at, string.format('%d', -old)) end
  if hold > 0 then
    hold_in(key, v, bucket, hold)
    redis.call('HSET', key, 'S', bucket)
  end
  if add > 0 or not v[1] then redis.call('HINCRBY', key, 'used', string.format('%d', add)) end
  if hold > 0 or v[9] or total > 0 then
    redis.call('HSET', key, mine, string.format('%d:%d:%d', bucket, hold, math.max(total, reported)))
  end
  if not v[1] and ttl > 0 then redis.call('EXPIRE', key, ttl) end
  out[#out + 1] = hold
  out[#out + 1] = used + held + hold
  out[#out + 1] = used
end
return out
""")


class Admitted:
    """A reservation its slices covered: answered at once, like a future already done."""

    __slots__ = ("results", "used")

    def __init__(self, results: list, used: list):
        self.results, self.used = results, used  # (held, total) and the settled amount, per counter

    def done(self) -> bool:
        return True

    def add_done_callback(self, callback):
        callback(self)


class Slice:
    """One counter's slice in this process: granted (held on Redis for it), held (its requests'
    holds in flight), total (what its requests used, ever: reported as is, so one Slice a key and
    process for as long as Redis keeps the key: see Slices.dormant), since (total when last
    reported: the use since is not in Redis yet), acked (total Redis last answered to), outside
    (Redis' total without this slice, then), used (Redis' settled amount, then), valid (until when
    Redis surely still holds it: its hold expires unless reported again), syncing (a report in
    flight: nothing admitted from it until Redis answers; kept: what it held for it), doubt (a report
    went unanswered: Redis may have granted what it asked, so it is reported again, even quiet)."""

    __slots__ = ("key", "limit", "ttl", "granted", "held", "total", "since", "acked", "outside", "used",
                 "requests", "units", "want", "unit", "seen", "valid", "syncing", "kept", "doubt")

    def __init__(self, key: str, limit: int, ttl: int, total: int = 0):
        self.key, self.limit, self.ttl = key, limit, ttl
        self.granted = self.held = self.outside = self.used = self.kept = 0
        self.total = self.since = self.acked = total
        self.requests = self.units = 0  # demand in the current interval (admitted here or by Redis)
        self.want = self.unit = 0  # the slice's size to ask for; a request's amount, lately
        self.seen = time.monotonic()
        self.valid = 0.0
        self.syncing = self.doubt = False

    def free(self) -> int:
        return self.granted - self.held - (self.total - self.since)


class Slices:
    """A process's slices on one Redis, and the task that reports and resizes them."""

    def __init__(self):
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # (made in the process that uses it)
        self.table: dict[str, Slice] = {}
        # key -> (total, until): a slice gone quiet leaves its total, which Redis keeps in the key's
        # field: a slice made again for the key goes on from it (else its use would not count until
        # it passed the old total). Kept until the key expires (its ttl after the slice's last use).
        self.dormant: dict[str, tuple[int, float]] = {}
        self.local: dict[str, tuple] = {}  # hold id -> the keys its request holds on, admitted here
        self.demand: dict[str, list] = {}  # key -> [requests, units] this interval, before it has a slice
        self.interval_ends = self.sweep_at = 0.0
        self.task: asyncio.Task | None = None
        self.closed = False  # drained (the process stopping): what its requests in flight settle is reported at once
        self.lock = asyncio.Lock()

    def admit(self, counters, hold_id: str) -> Admitted | None:
        """The reservation's outcome when every counter's slice covers it, the request then admitted
        here; else None (nothing changed)."""
        table = self.table
        slices = []
        now = time.monotonic()
        for c in counters:
            s = table.get(c.key)
            if s is None or s.syncing or now > s.valid:
                return None
            if c.limit != s.limit:  # the operator changed it: Redis decides until the next report
                s.limit = c.limit
                s.granted = min(s.granted, s.held + s.total - s.since)
                return None
            need = c.hold + c.use
            if c.need > need:
                need = c.need
            if s.granted - s.held - s.total + s.since < need:
                return None
            slices.append(s)
        if len(self.local) >= MAX_LOCAL or self.closed:
            return None
        results, used = [], []
        settles = False  # a request with holds (tokens, spend) is settled here later
        for c, s in zip(counters, slices):
            s.held += c.hold
            s.total += c.use
            s.requests += 1
            s.units += c.hold + c.use
            unreported = s.total - s.since
            results.append((c.hold, s.outside + s.held + unreported))
            used.append(s.used + unreported)
            settles = settles or c.hold or not c.use
        if settles:
            self.local[hold_id] = tuple(c.key for c in counters)
        return Admitted(results, used)

    def note(self, counters) -> bool:
        """A reservation going to Redis, counted as its keys' demand in this interval: True when
        a key is busy (its slice made: the reporting task is to run)."""
        now = time.monotonic()
        if now >= self.interval_ends:
            self.demand.clear()
            self.interval_ends = now + SYNC_S
        busy = False
        table, demand = self.table, self.demand
        for c in counters:
            s = table.get(c.key)
            if s is not None:
                s.requests += 1
                s.units += c.hold + c.use
                busy = busy or s.requests >= MIN_REQUESTS
                continue
            if c.limit is None or self.closed:
                continue
            seen = demand.get(c.key)
            if seen is None:
                seen = demand[c.key] = [0, 0]
            seen[0] += 1
            seen[1] += c.hold + c.use
            if seen[0] >= MIN_REQUESTS:
                s = table[c.key] = Slice(c.key, c.limit, c.ttl, self.dormant.pop(c.key, (0, 0))[0])
                s.requests, s.units = seen
                busy = True
        return busy

    def settle(self, items, hold_id: str) -> tuple[list, list]:
        """A request admitted here, settled in its slices: (the items settled so, the rest: spend
        counted without a limit, for Redis, without a hold)."""
        keys = self.local.pop(hold_id)
        here, rest = [], []
        for item in items:
            s = self.table.get(item[0]) if item[0] in keys else None
            if s is None:
                if item[2]:
                    rest.append((item[0], 0, item[2], item[3]))
                continue
            s.held = max(0, s.held - item[1])
            s.total += item[2]
            here.append(item)
        return here, rest

    def owns(self, hold_id: str) -> bool:
        return bool(hold_id) and hold_id in self.local

    def report(self, last: bool = False) -> tuple[list[Slice], list[str], list]:
        """The slices to report now with the script's keys and args (frozen until Redis answers);
        quiet ones that hold nothing and owe nothing Redis has not answered to made dormant. last:
        the process is stopping: everything but the requests in flight given back."""
        now = time.monotonic()
        chosen, keys, args = [], [], []
        for key, s in list(self.table.items()):
            # Asked: twice the last busy interval's use, an eighth less each interval since (bursts a
            # few intervals apart keep theirs; a refusal elsewhere asks unused slices back at once).
            busy = s.requests >= MIN_REQUESTS and not last
            s.want = max(2 * s.units, s.want * 7 // 8) if busy else (0 if last else s.want * 7 // 8)
            if s.requests:
                s.unit = s.units // s.requests
                s.seen = now
            if not s.want and not s.granted and not s.held and s.total == s.acked and not s.doubt:
                if s.requests == 0 and now - s.seen > SYNC_S * 4:
                    del self.table[key]
                    self.dormant[key] = (s.total, now + s.ttl if s.ttl > 0 else float("inf"))
                s.requests = s.units = 0
                continue
            s.requests = s.units = 0
            s.syncing, s.kept, s.since = True, s.held, s.total
            chosen.append(s)
            keys.append(key)
            args += [s.limit, s.ttl, s.total, s.held, s.want, s.unit]
        if now >= self.sweep_at:
            self.sweep_at = now + 60
            for key in [k for k, (_, until) in self.dormant.items() if until <= now]:
                del self.dormant[key]
        return chosen, keys, args

    @staticmethod
    def answered(chosen: list[Slice], reported: list[int], answer: list[int], valid: float):
        for s, total, hold, cur, used in zip(chosen, reported, answer[0::3], answer[1::3], answer[2::3]):
            s.granted, s.acked, s.outside, s.used = hold, total, cur - hold, used
            s.valid, s.syncing, s.doubt = valid, False, False

    @staticmethod
    def unanswered(chosen: list[Slice]):
        """Redis' state unknown: the slice is what Redis holds for it either way (its requests in
        flight when reported) until a report is answered; one is sent again, even with nothing to
        say (the script may have run, granting a slice that a stopping process must give back)."""
        for s in chosen:
            s.granted, s.syncing, s.doubt = s.kept, False, True

    async def run(self, pipe_of, life_of):
        """Reports every SYNC_S while any slice holds something or is wanted."""
        while self.table and not self.closed:
            await asyncio.sleep(SYNC_S)
            await self._report(pipe_of, life_of)

    async def _report(self, pipe_of, life_of, last: bool = False):
        chosen, keys, args = self.report(last)
        if not chosen:
            return
        reported = [s.since for s in chosen]
        life = life_of()
        try:
            answer = await pipe_of().script(_SLICE, keys, args + [self.id, life])
        except BaseException as exc:  # Redis down or slow, or cancelled: what Redis surely holds
            self.unanswered(chosen)
            if isinstance(exc, Exception):
                log.debug("limits: reporting slices failed (%s)", type(exc).__name__)
                return
            raise
        # A hold lasts a lifetime from its bucket's start at least: admitting from it stops well before.
        self.answered(chosen, reported, answer, time.monotonic() + life * 0.75)

    async def drain(self, pipe_of, life_of):
        """The process stopping: the use its slices admitted reported and what they hold given back
        (else a budget's share stays held until it expires, minutes after a deploy), then its records
        in the keys dropped (no report of this process can come again)."""
        self.closed = True
        if self.running():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.final(pipe_of, life_of, list(self.dormant))

    async def final(self, pipe_of, life_of, dormant=()):
        """Drained: reported again (as a request in flight then settles), and the records of the
        slices that hold nothing more dropped, with the slices."""
        async with self.lock:
            await self._report(pipe_of, life_of, last=True)
            done = [k for k, s in self.table.items()
                    if not s.held and not s.syncing and not s.doubt and s.acked == s.total]
            for key in done:
                del self.table[key]
            self.dormant.clear()
            if done or dormant:
                pipe = pipe_of()
                try:
                    await asyncio.gather(*(pipe.call("HDEL", key, f"s:{self.id}") for key in (*done, *dormant)))
                except Exception as exc:  # left in keys that expire, or in a total budget's (a few bytes)
                    log.debug("limits: dropping the slices' records failed (%s)", type(exc).__name__)

    def running(self) -> bool:
        task = self.task
        return task is not None and not task.done() and not task.get_loop().is_closed()
