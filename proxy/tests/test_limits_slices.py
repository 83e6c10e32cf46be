"""Slices (proxy/limits/slices.py): a busy key admitted in process from a share held on Redis, never
past a limit, exact at it, with what it used reported once however often a report is repeated."""
import asyncio
import os
import threading
import time
import uuid

import pytest
import redis

from proxy.limits import counters as store
from proxy.limits import slices
from proxy.limits.counters import _RESERVE, Counter, RedisCounters, Refused
from proxy.redis_pipe import Pipe

REDIS = os.environ.get("REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS, reason="slices are held on Redis")


def key() -> str:
    return f"test-slices-{uuid.uuid4().hex}"


@pytest.fixture
def client():
    made = []
    c = redis.Redis.from_url(REDIS)
    c.made = made
    yield c
    if made:
        c.delete(*made)


def named(client, count=1):
    names = [key() for _ in range(count)]
    client.made.extend(names)
    return names


async def admit(counters: RedisCounters, cs: list[Counter], hold_id: str):
    """A request's reservation as the policy makes it: started, then its outcome."""
    answer = counters.start(cs, hold_id)
    if answer is None:
        return await counters.reserve(cs, hold_id)
    return await counters.finish(cs, answer, hold_id)


def held(client, name: str, life: float = 0) -> int:
    """What a counter holds: 'held' and its time buckets, requests' and slices' (with life, only
    those Redis still counts)."""
    fields = client.hgetall(name)
    seconds, micros = client.time()
    bucket = int((seconds + micros / 1e6) // (life / 4)) if life else None
    return sum(int(v) for k, v in fields.items() if k == b"held" or k.startswith(b"b:")
               and (bucket is None or int(k[2:]) >= bucket - 4))


def vars_of(slice_) -> dict:
    return {name: getattr(slice_, name) for name in slice_.__slots__} if slice_ else {}


async def until(done, tries=200):
    for _ in range(tries):
        if done():
            return True
        await asyncio.sleep(slices.SYNC_S)
    return False


async def make_busy(counters, cs_of, rounds=6, burst=200):
    """A key busy on this process: its slice granted. Returns how many were served."""
    served = 0
    for _ in range(rounds):
        await asyncio.gather(*(admit(counters, cs_of(), uuid.uuid4().hex) for _ in range(burst)))
        served += burst
        await asyncio.sleep(slices.SYNC_S)
    return served


async def settled(counters: RedisCounters, done):
    """Waits (a few reports at most) until done() is true."""
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(slices.SYNC_S)
    raise AssertionError("the slices' reports never caught up")


def test_a_busy_key_is_admitted_from_its_slice_and_redis_counts_every_request(client, monkeypatch):
    rpm, = named(client)
    counters = RedisCounters(REDIS)
    asked = []
    real_start = Pipe.start
    monkeypatch.setattr(Pipe, "start", lambda self, *a: asked.append(1) or real_start(self, *a))

    async def busy(rounds):
        for turn in range(8):
            if turn >= 4:  # (a burst that comes while the slice's report is out asks Redis: not these)
                assert await until(lambda: rpm in counters.slices.table and not counters.slices.table[rpm].syncing
                                   and counters.slices.table[rpm].free() >= 20), vars_of(counters.slices.table.get(rpm))
            before = len(asked)
            cs = [[Counter(rpm, 10**6, 1, 0, 1, 120)] for _ in range(20)]
            ids = [uuid.uuid4().hex for _ in cs]
            started = [counters.start(c, i) for c, i in zip(cs, ids)]  # in this loop turn, as checked
            await asyncio.gather(*(counters.finish(c, a, i) if a is not None else counters.reserve(c, i)
                                   for c, a, i in zip(cs, started, ids)))
            rounds.append(len(asked) - before)
            await asyncio.sleep(2 * slices.SYNC_S)

    async def main():
        rounds = []
        await busy(rounds)
        await settled(counters, lambda: int(client.hget(rpm, "used") or 0) == 160)
        await settled(counters, lambda: rpm in counters.slices.dormant)  # quiet: the slice given back
        await busy(rounds)  # busy again: its use counts from where it was
        await settled(counters, lambda: int(client.hget(rpm, "used") or 0) == 320)
        return rounds
    rounds = asyncio.run(main())
    assert rounds[0] == 20  # not busy yet: every request asked Redis
    assert rounds[4:8] == [0, 0, 0, 0]  # then the slice served them
    assert rounds[-4:] == [0, 0, 0, 0]  # and again once busy again
    assert int(client.hget(rpm, "used")) == 320


@pytest.mark.parametrize("limit", [3000, 20_000])
def test_two_processes_with_slices_serve_exactly_the_limit_and_never_more(client, limit):
    rpm, = named(client)
    processes = [RedisCounters(REDIS), RedisCounters(REDIS)]
    here = []
    for p in processes:
        p.slices.admit = lambda cs, hold_id, admit=p.slices.admit: here.append(admit(cs, hold_id)) or here[-1]

    async def worker(counters):
        served = 0
        while True:
            try:
                await admit(counters, [Counter(rpm, limit, 1, 0, 1, 120)], uuid.uuid4().hex)
            except Refused:
                return served
            served += 1

    async def main():
        served = await asyncio.gather(*(worker(p) for p in processes for _ in range(16)))
        await settled(processes[0], lambda: int(client.hget(rpm, "used") or 0) == sum(served))
        return served
    served = asyncio.run(main())
    assert sum(served) == limit
    assert int(client.hget(rpm, "used")) == limit
    if limit > 10_000:  # long enough for reports: slices served part of it without asking Redis
        assert any(answer is not None for answer in here)


def test_a_budget_held_by_slices_settles_to_what_was_spent_and_is_never_overrun(client):
    spend, = named(client)
    counters = [RedisCounters(REDIS), RedisCounters(REDIS)]
    cap, worst, cost = 200_000, 100, 70

    async def worker(backend):
        served = 0
        while True:
            hold_id = uuid.uuid4().hex
            try:
                await admit(backend, [Counter(spend, cap, worst, worst, 0, 0)], hold_id)
            except Refused:
                return served
            await asyncio.sleep(0)
            store.settle_soon(backend, [(spend, worst, cost, 0)], hold_id, 1)
            served += 1

    async def main():
        served = await asyncio.gather(*(worker(b) for b in counters for _ in range(16)))
        await settled(counters[0], lambda: int(client.hget(spend, "used") or 0) == cost * sum(served)
                      and held(client, spend) == 0)
        return sum(served)
    served = asyncio.run(main())
    assert cost * served <= cap < cost * served + worst + cost  # refused only once the next could overrun
    assert int(client.hget(spend, "used")) == cost * served
    assert held(client, spend) == 0  # every slice given back once the key went quiet


def test_a_report_repeated_after_a_lost_answer_counts_its_use_once(client):
    rpm, = named(client)
    pipe_args = [10**6, 120, 40, 0, 100, 1]  # limit, ttl, total 40 used, nothing in flight, want 100, unit 1

    async def main():
        pipe = Pipe(REDIS, 1.0, 1.0)
        await pipe.connect()
        first = await pipe.script(slices._SLICE, [rpm], pipe_args + ["p1", 400])
        again = await pipe.script(slices._SLICE, [rpm], pipe_args + ["p1", 400])
        other = await pipe.script(slices._SLICE, [rpm], [10**6, 120, 5, 0, 0, 1, "p2", 400])
        pipe.close()
        return first, again, other
    first, again, other = asyncio.run(main())
    assert first == [100, 140, 40]  # held 100 for p1, 40 used
    assert again == [100, 140, 40]  # the same report: the use not counted twice, the hold replaced
    assert other == [0, 145, 45]  # another process' 5 (it wants nothing): p1's hold still counts
    assert int(client.hget(rpm, "used")) == 45 and held(client, rpm) == 100


def test_no_slice_past_half_the_limit_nor_smaller_than_a_request(client):
    names = named(client, 3)

    async def main():
        pipe = Pipe(REDIS, 1.0, 1.0)
        await pipe.connect()
        answers = [await pipe.script(slices._SLICE, [n], args + ["p", 400]) for n, args in zip(names, (
            [1000, 120, 501, 0, 50, 1],       # 501 of 1000 used: less than half left
            [1000, 120, 0, 0, 50, 20],        # a 64th of what is left (15) is less than a request (20)
            [1000, 120, 0, 0, 50, 10]))]      # 15 granted: at most a 64th of what is left
        pipe.close()
        return answers
    half, small, fine = asyncio.run(main())
    assert half[0] == 0 and small[0] == 0 and fine[0] == 15


def test_a_report_unanswered_leaves_a_slice_what_redis_holds_for_it_either_way(client):
    tpm, = named(client)
    counters = RedisCounters(REDIS)

    async def main():
        for _ in range(3):  # busy, then a slice
            await asyncio.gather(*(admit(counters, [Counter(tpm, 10**7, 10, 10, 0, 120)], uuid.uuid4().hex)
                                   for _ in range(20)))
            await asyncio.sleep(2.5 * slices.SYNC_S)
        s = counters.slices.table[tpm]
        flying = uuid.uuid4().hex
        assert counters.slices.admit([Counter(tpm, 10**7, 10, 10, 0, 120)], flying) is not None
        assert s.free() >= 10
        counters.slices.task.cancel()  # the report below is never answered
        await asyncio.sleep(0)
        chosen, _, _ = counters.slices.report()
        assert counters.slices.admit([Counter(tpm, 10**7, 10, 10, 0, 120)], uuid.uuid4().hex) is None  # frozen
        in_flight = s.held  # (the requests before it are not settled here)
        counters.slices.unanswered(chosen)
        # Redis holds, answered or not, the requests in flight when reported: only those.
        assert (s.granted, s.free()) == (in_flight, 0)
        counters.slices.settle([(tpm, 10, 4, 120)], flying)
        assert s.free() == 6  # what the settled request did not use may serve another
    asyncio.run(main())


def test_a_process_that_stops_reporting_loses_its_slice(client, monkeypatch):
    """A process killed with a slice leaves a hold: it expires as a request's would."""
    rpm, = named(client)
    monkeypatch.setattr(store, "hold_life", lambda: 1)

    async def main():
        pipe = Pipe(REDIS, 1.0, 1.0)
        await pipe.connect()
        assert (await pipe.script(slices._SLICE, [rpm], [100_000, 120, 0, 0, 500, 1, "dead", 1]))[0] == 500
        await asyncio.sleep(1.3)
        pipe.close()
    asyncio.run(main())
    counters = RedisCounters(REDIS)
    assert asyncio.run(counters.reserve([Counter(rpm, 100_000, 1, 0, 1, 120)])) == [(0, 1)]


def test_a_stopping_process_reports_its_slices_and_gives_them_back(client):
    rpm, = named(client)
    counters = RedisCounters(REDIS)

    async def main():
        for _ in range(3):
            await asyncio.gather(*(admit(counters, [Counter(rpm, 10**6, 1, 0, 1, 120)], uuid.uuid4().hex)
                                   for _ in range(20)))
            await asyncio.sleep(2 * slices.SYNC_S)
        assert held(client, rpm) > 0  # a slice of the limit, held for this process
        await counters.slices.drain(counters._pipe, store.hold_life)
    asyncio.run(main())
    assert held(client, rpm) == 0 and int(client.hget(rpm, "used")) == 60


# --- attacks (from a review that wrote them against the first version: each failed then) ---------

def test_exact_at_the_limit_when_the_process_holding_a_slice_goes_quiet(client):
    """Invariant (2), exactly L served of R parallel requests. Process A is busy for a moment (its
    slice granted while more than half the limit is left), then its clients stop; the last requests,
    sent at once to process B, are refused while A's unused slice is still held: an idle slice is
    only halved every 50 ms (keep = held + free // 2) and a refusal is asked again once, 100 ms
    later, when a quarter of it is still held."""
    rpm, = named(client)
    limit = 20_000
    a, b, others = RedisCounters(REDIS), RedisCounters(REDIS), RedisCounters(REDIS)
    rpm_of = lambda: [Counter(rpm, limit, 1, 0, 1, 120)]  # noqa: E731

    async def one():
        try:
            await admit(b, rpm_of(), uuid.uuid4().hex)
            return 1
        except Refused:
            return 0

    async def main():
        served_a = await make_busy(a, rpm_of)
        slice_a = a.slices.table[rpm]
        assert slice_a.free() > 100  # A holds a slice it will not use again
        # Other traffic served meanwhile through Redis (other processes, one request each), then
        # the last 1000 of the R requests, in parallel, on B: more than what is left.
        rest = limit - served_a - 2 * slice_a.free()
        await asyncio.gather(*(others.reserve(rpm_of()) for _ in range(rest)))
        served_b = sum(await asyncio.gather(*(one() for _ in range(1000))))
        left_in_a = slice_a.free()
        await until(lambda: rpm in a.slices.dormant)
        return served_a + rest + served_b, left_in_a
    served, left_in_a = asyncio.run(main())
    assert int(client.hget(rpm, "used")) == served
    assert served == limit, f"{limit - served} of the limit never served (A's slice still held {left_in_a})"


def test_a_process_paused_past_its_slices_lifetime_admits_nothing_from_them(client, monkeypatch):
    """Invariant (1), never past the limit whatever the timing. A process with a slice is paused
    (SIGSTOP, a VM frozen, a loop blocked) for longer than the holds' lifetime: its slice's hold
    expires on Redis, another process takes what is left of the limit, and the paused one, resumed,
    still admits from the slice it believes held (and its next report holds `keep` again without
    looking at the limit). hold_life is 1 s here, as in test_limits_slices."""
    rpm, = named(client)
    limit = 20_000
    monkeypatch.setattr(store, "hold_life", lambda: 1)
    a = RedisCounters(REDIS)
    rpm_of = lambda: [Counter(rpm, limit, 1, 0, 1, 120)]  # noqa: E731
    other = {"served": 0}

    def other_process():  # another gateway process serving its own requests meanwhile
        time.sleep(1.4)  # (past 1.25 hold lives: A's slice no longer counts)
        r = redis.Redis.from_url(REDIS)
        while True:
            pipe = r.pipeline(transaction=False)
            for _ in range(500):
                pipe.eval(_RESERVE.text, 1, rpm, limit, 1, 0, 1, 120, "", 1)
            answers = pipe.execute()
            other["served"] += sum(1 for answer in answers if answer[0] == 1)
            if any(answer[0] == 0 for answer in answers):
                return

    async def a_serves():
        served = 0
        while True:
            try:
                await admit(a, rpm_of(), uuid.uuid4().hex)
            except Refused:
                return served
            served += 1

    async def main():
        served = await make_busy(a, rpm_of)
        assert a.slices.table[rpm].free() > 100
        thread = threading.Thread(target=other_process)
        thread.start()
        time.sleep(2.5)  # A's loop stands still (the process paused)
        thread.join()
        served += sum(await asyncio.gather(*(a_serves() for _ in range(4))))
        await until(lambda: rpm in a.slices.dormant)
        return served
    served_a = asyncio.run(main())
    total = served_a + other["served"]
    assert total <= limit, f"{total} served, limit {limit}"
    assert int(client.hget(rpm, "used")) <= limit


@pytest.mark.parametrize("new_limit", [0, 1_000])
def test_a_lowered_limit_applies_to_a_busy_key(client, new_limit):
    """Invariant (1) and the README ("0 refuses every request. Changes apply within
    SMARTFLOW_CONFIG_TTL"): the operator lowers a key's limit (to 0, or below what it has used),
    and the busy key goes on being served from its slice: a Slice keeps the limit it was made with
    (admit() never looks at the request's limit; every report sends the old one, which the script
    grants against), for as long as the key stays busy (a budget's key: the whole period)."""
    spend, = named(client)
    cap, worst, cost = 10**9, 1000, 700
    a = RedisCounters(REDIS)

    async def one(limit):
        hold_id = uuid.uuid4().hex
        try:
            await admit(a, [Counter(spend, limit, 1, worst, 0, 0)], hold_id)
        except Refused:
            return 0
        store.settle_soon(a, [(spend, worst, cost, 0)], hold_id, 1)
        return 1

    async def main():
        for _ in range(6):  # busy under the old cap: a slice
            await asyncio.gather(*(one(cap) for _ in range(100)))
            await asyncio.sleep(slices.SYNC_S)
        assert spend in a.slices.table
        used_before = int(client.hget(spend, "used"))
        assert used_before > new_limit
        served = 0
        for _ in range(20):  # the cap lowered (1 s of traffic, as busy as before)
            served += sum(await asyncio.gather(*(one(new_limit) for _ in range(100))))
            await asyncio.sleep(slices.SYNC_S)
        return served
    served = asyncio.run(main())
    assert served == 0, f"{served} requests served after the limit was lowered to {new_limit}"


def test_a_refusal_costs_redis_no_more_with_many_fields_in_the_key(client):
    """A refusal now reads the refusing counter's whole hash (HGETALL) to sum the slices' holds.
    A budget's hash is its requests' anchor: an h:<id> field for every request in flight (and for
    every one never settled: a killed process's, kept for the period, forever for a total budget),
    plus an s:<id> field for every process ever busy on it. A client retrying on 429 against a spent
    budget then costs Redis' one thread O(fields) a refusal instead of O(1)."""
    spend, = named(client)
    cap = 10**6
    client.hset(spend, mapping={"used": cap, **{f"h:{uuid.uuid4().hex}": 1 for _ in range(20_000)}})
    refuse = [cap, 1, 1000, 0, 0, "", 400]

    def cost(n=200):
        before = client.info("commandstats")
        pipe = client.pipeline(transaction=False)
        for _ in range(n):
            pipe.eval(_RESERVE.text, 1, spend, *refuse)
        answers = pipe.execute()
        assert all(answer[0] == 0 for answer in answers)
        after = client.info("commandstats")
        return (after["cmdstat_eval"]["usec"] - before.get("cmdstat_eval", {"usec": 0})["usec"]) / n
    per_refusal = cost()
    assert per_refusal < 100, f"a refusal costs Redis {per_refusal:.0f} us with 20000 requests in flight"


def test_a_stopped_process_leaves_no_record_behind(client):
    """Invariant (5), no growth without bound: every process that was ever busy on a key leaves its
    s:<id> field in the key's hash, even after drain() gave everything back. A total budget's key
    (ttl 0) is kept forever: a field for every worker of every deploy and restart, all of them read
    again by every refusal (HGETALL)."""
    spend, = named(client)
    budget = lambda: [Counter(spend, 10**12, 1, 1000, 0, 0)]  # noqa: E731

    async def lifetime():
        backend = RedisCounters(REDIS)  # a worker process, from its start to its stop

        async def one():
            hold_id = uuid.uuid4().hex
            await admit(backend, budget(), hold_id)
            store.settle_soon(backend, [(spend, 1000, 700, 0)], hold_id, 1)
        for _ in range(4):
            await asyncio.gather(*(one() for _ in range(50)))
            await asyncio.sleep(slices.SYNC_S)
        await backend.slices.drain(backend._pipe, store.hold_life)
    for _ in range(3):
        asyncio.run(lifetime())
    assert held(client, spend) == 0 and int(client.hget(spend, "used")) == 3 * 200 * 700
    left = [k for k in client.hkeys(spend) if k.startswith(b"s:")]
    assert left == [], f"{len(left)} fields of stopped processes kept forever"


def test_a_request_in_flight_when_the_slices_are_drained_is_counted_and_gives_back_its_hold(client):
    spend, = named(client)
    cap, worst, cost = 10**12, 1000, 700
    a = RedisCounters(REDIS)
    budget = lambda: [Counter(spend, cap, 1, worst, 0, 0)]  # noqa: E731

    async def one():
        hold_id = uuid.uuid4().hex
        await admit(a, budget(), hold_id)
        store.settle_soon(a, [(spend, worst, cost, 0)], hold_id, 1)

    async def main():
        for _ in range(6):
            await asyncio.gather(*(one() for _ in range(100)))
            await asyncio.sleep(slices.SYNC_S)
        flying = uuid.uuid4().hex
        assert a.slices.admit(budget(), flying) is not None  # in flight, admitted from the slice
        await a.slices.drain(a._pipe, store.hold_life)  # the process stopping (lifespan shutdown)
        assert held(client, spend) == worst  # all given back but the request still in flight
        store.settle_soon(a, [(spend, worst, cost, 0)], flying, 1)  # its answer completes
        await until(lambda: held(client, spend) == 0)
    asyncio.run(main())
    assert int(client.hget(spend, "used")) == 601 * cost
    assert held(client, spend) == 0
    assert not [k for k in client.hkeys(spend) if k.startswith(b"s:")]


def test_a_request_cancelled_while_it_asks_again_after_a_refusal_gives_back_what_it_made(client, monkeypatch):
    """A refusal while slices may be held asks again 100 ms later; a client that leaves while Redis
    answers that second ask must not leave its worst case held until the hold expires."""
    spend, = named(client)
    cap, worst = 10**10, 10**6
    a, b = RedisCounters(REDIS), RedisCounters(REDIS)
    budget = lambda: [Counter(spend, cap, 1, worst, 0, 0)]  # noqa: E731
    victim = uuid.uuid4().hex
    real_start = Pipe.start

    def start(self, script, keys, args):
        answer = real_start(self, script, keys, args)
        if script is _RESERVE and victim in args and answer is not None:  # the second ask is out:
            asyncio.get_running_loop().call_soon(request.cancel)  # the client leaves meanwhile
        return answer

    async def one(backend):
        hold_id = uuid.uuid4().hex
        await admit(backend, budget(), hold_id)
        store.settle_soon(backend, [(spend, worst, worst, 0)], hold_id, 1)

    async def main():
        global request
        for _ in range(6):  # A busy: a slice of the budget
            await asyncio.gather(*(one(a) for _ in range(100)))
            await asyncio.sleep(slices.SYNC_S)
        assert await until(lambda: spend in a.slices.table and held(client, spend) == a.slices.table[spend].granted > 0)
        # Someone else's spend takes all the rest: the budget is spent but for A's slice.
        client.hincrby(spend, "used", cap - int(client.hget(spend, "used")) - held(client, spend))
        monkeypatch.setattr(Pipe, "start", start)
        request = asyncio.ensure_future(b.reserve(budget(), victim))  # refused: A's slice asked back
        await asyncio.sleep(0.01)
        assert not request.done()  # it waits to ask again
        with pytest.raises(asyncio.CancelledError):
            await request
        await until(lambda: held(client, spend) == 0)  # A gave its slice back; the victim gave back its own
    asyncio.run(main())
    assert held(client, spend) == 0


def test_a_report_redis_ran_but_did_not_answer_before_the_drain_is_given_back(client, monkeypatch):
    """The process stops while a report is out: Redis ran it (granting a slice) but its answer has
    not come when drain() cancels the reporting task. The slice's state is then unknown, so the last
    report must still be sent, even though nothing was used since the last answer; else the grant
    stays held until it expires (a budget's share gone for minutes after every deploy)."""
    spend, = named(client)
    budget = lambda: [Counter(spend, 10**12, 1, 1000, 0, 0)]  # noqa: E731
    real = store.loop_pipe
    hung = {}

    class Unanswered:
        """A pipe whose next slice report reaches Redis and whose answer never comes back."""
        def __init__(self, pipe):
            self.pipe = pipe

        def __getattr__(self, name):
            return getattr(self.pipe, name)

        async def script(self, script, *args, **kwargs):
            answer = await self.pipe.script(script, *args, **kwargs)
            if script is slices._SLICE and "armed" in hung and "ran" not in hung:
                hung["ran"] = answer
                await asyncio.sleep(3600)
            return answer

    monkeypatch.setattr(store, "loop_pipe", lambda url: Unanswered(real(url)))

    async def main():
        backend = RedisCounters(REDIS)

        async def one():
            hold_id = uuid.uuid4().hex
            await admit(backend, budget(), hold_id)
            store.settle_soon(backend, [(spend, 1000, 700, 0)], hold_id, 1)
        for _ in range(4):
            await asyncio.gather(*(one() for _ in range(50)))
            await asyncio.sleep(slices.SYNC_S)
        await asyncio.sleep(slices.SYNC_S * 3)  # quiet: every use reported and answered
        hung["armed"] = True
        assert await until(lambda: "ran" in hung)
        assert hung["ran"][0] > 0, "the report in flight asked for and was granted a slice"
        await backend.slices.drain(backend._pipe, store.hold_life)
    asyncio.run(main())
    assert held(client, spend) == 0 and int(client.hget(spend, "used")) == 200 * 700
    assert not [k for k in client.hkeys(spend) if k.startswith(b"s:")]
