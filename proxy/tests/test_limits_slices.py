"""Slices (proxy/limits/slices.py): a busy key admitted in process from a share held on Redis, never
past a limit, exact at it, with what it used reported once however often a report is repeated."""
import asyncio
import os
import uuid

import pytest
import redis

from proxy.limits import counters as store
from proxy.limits import slices
from proxy.limits.counters import Counter, RedisCounters, Refused
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


def held(client, name: str) -> int:
    """Everything a counter holds: 'held' and the time buckets (requests' and slices')."""
    fields = client.hgetall(name)
    return sum(int(v) for k, v in fields.items() if k == b"held" or k.startswith(b"b:"))


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
        for _ in range(8):
            before = len(asked)
            await asyncio.gather(*(admit(counters, [Counter(rpm, 10**6, 1, 0, 1, 120)], uuid.uuid4().hex)
                                   for _ in range(20)))
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
    assert rounds[5:8] == [0, 0, 0]  # then none did
    assert rounds[-3:] == [0, 0, 0]
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
            await asyncio.sleep(2 * slices.SYNC_S)
        s = counters.slices.table[tpm]
        flying = uuid.uuid4().hex
        assert counters.slices.admit([Counter(tpm, 10**7, 10, 10, 0, 120)], flying) is not None
        free, flying_and_before = s.free(), s.held  # (the requests before it are not settled here)
        assert free >= 10
        counters.slices.task.cancel()  # the report below is never answered
        await asyncio.sleep(0)
        counters.slices.report()
        # Redis holds, answered or not, the requests in flight and half of what was free.
        assert (s.granted, s.free()) == (flying_and_before + free // 2, free // 2)
        counters.slices.settle([(tpm, 10, 4, 120)], flying)
        assert s.free() == free // 2 + 6  # what the settled request did not use may serve another
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
