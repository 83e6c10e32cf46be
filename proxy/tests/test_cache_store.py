"""The in-process store: LRU bounded by bytes, TTL, O(1) stats."""
import asyncio
import os
import time
import uuid

import pytest

from proxy.cache.store import MemoryStore, RedisStore

REDIS = os.environ.get("REDIS_URL")


def test_least_recently_used_goes_first_and_bytes_stay_bounded():
    store = MemoryStore(max_bytes=300)

    async def scenario():
        for key in "abc":
            await store.put(key, b"x" * 100, 60)
        await store.get("a")  # now b is the least recently used
        await store.put("d", b"y" * 100, 60)
        return [await store.get(k) is not None for k in "abcd"]
    assert asyncio.run(scenario()) == [True, False, True, True]
    assert store.stats() == {"entries": 3, "bytes": 300, "ok": True}


def test_an_entry_larger_than_the_bound_is_not_stored():
    store = MemoryStore(max_bytes=10)
    asyncio.run(store.put("big", b"x" * 11, 60))
    assert store.stats()["entries"] == 0


def test_expired_entries_are_not_answered_and_are_dropped():
    store = MemoryStore(max_bytes=1000)

    async def scenario():
        await store.put("old", b"x" * 10, 1)
        await store.put("replaced", b"x" * 10, 60)
        await store.put("replaced", b"x" * 20, 60)
        time.sleep(1.05)
        gone = await store.get("old")
        await store.put("new", b"y" * 5, 60)
        return gone
    assert asyncio.run(scenario()) is None
    assert store.stats() == {"entries": 2, "bytes": 25, "ok": True}


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
def test_200_concurrent_lookups_on_redis_are_all_served():
    """redis-py's pool refused its 101st connection (MaxConnectionsError: BYPASS, then a back-off
    for everyone); the store's calls are pipelined on one connection instead."""
    store = RedisStore(REDIS, f"test-{uuid.uuid4().hex}")

    async def scenario():
        await store.put("k", b"value", 60)
        found = await asyncio.gather(*(store.get("k") for _ in range(200)), return_exceptions=True)
        await asyncio.gather(*(store.put(f"k{i}", b"v", 60) for i in range(200)))
        return found
    found = asyncio.run(scenario())
    assert found == [b"value"] * 200, {type(f).__name__ for f in found}
    assert store.down_until == 0.0
    store.clear()


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
def test_a_posted_store_is_found_by_the_next_lookup_and_survives_a_script_flush():
    """An answer's store is posted (no task, no future, no timer) with the next write of the loop's
    connection: this process's next lookup, written after it, finds it. After SCRIPT FLUSH the post is
    refused (NOSCRIPT) and the store is sent whole instead."""
    import redis

    store = RedisStore(REDIS, f"test-{uuid.uuid4().hex}")

    async def scenario():
        await store.put("first", b"1", 60)  # loads the script on this connection
        assert store.post_put("k", b"posted", 60)
        found = await store.get("k")
        redis.Redis.from_url(REDIS).script_flush()
        assert store.post_put("again", b"whole", 60)
        await asyncio.sleep(0.05)
        for _ in range(100):
            if await store.get("again") is not None:
                break
            await asyncio.sleep(0.01)
        return found, await store.get("again")
    try:
        assert asyncio.run(scenario()) == (b"posted", b"whole")
        assert store.down_until == 0.0
    finally:
        store.clear()


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
def test_a_posted_store_redis_refuses_backs_the_store_off_and_loses_only_that_entry():
    import redis

    store = RedisStore(REDIS, f"test-{uuid.uuid4().hex}")
    client = redis.Redis.from_url(REDIS)

    async def scenario():
        await store.put("first", b"1", 60)
        client.set(store.total, "not a number")  # the script's INCRBY of the store's bytes is refused
        assert store.post_put("taken", b"v", 60)
        found = await store.get("first")  # answered after the refused store: the connection goes on
        await asyncio.sleep(0)
        return found
    try:
        assert asyncio.run(scenario()) == b"1"
        assert store.down_until > time.monotonic() and not store.post_put("later", b"v", 60)
    finally:
        store.clear()


def test_posted_stores_on_a_hung_redis_time_out_and_back_the_store_off(redis_server):
    """With no lookup awaited (Cache-Control: no-cache, no limits), nothing but the stores
    themselves goes to Redis: a Redis that stops answering must still be found at the timeout,
    not hold every answer posted to it."""
    import signal

    server, url = redis_server()
    store = RedisStore(url, f"test-{uuid.uuid4().hex}")

    async def scenario():
        await store.put("first", b"1", 60)  # connected, the script loaded
        server.send_signal(signal.SIGSTOP)
        posted, started = 0, time.monotonic()
        while time.monotonic() - started < 2 and store.post_put(f"k{posted}", b"v" * 1000, 60):
            posted += 1
            await asyncio.sleep(0.001)
        pipe = store._pipe()
        return posted, time.monotonic() - started, pipe.proto.lost, len(pipe.proto.pending)
    try:
        posted, seconds, lost, pending = asyncio.run(scenario())
    finally:
        server.send_signal(signal.SIGCONT)
    assert seconds < 1.5 and lost and pending == 0, (posted, seconds, lost, pending)
    assert store.down_until > time.monotonic()  # backing off: requests go on uncached
