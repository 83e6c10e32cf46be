"""The semantic index against no network, a dead or hung Redis, and any text a client can send."""
import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from django.conf import settings as django_settings

from proxy.cache import semantic
from tests.offline import NETWORK_OFF

OFFLINE = NETWORK_OFF + r"""
import django
django.setup()
from proxy.cache import semantic
vector = semantic.embedder.embed("What is the capital of France?")
print("loaded" if vector is not None and abs(float(vector @ vector) - 1) < 1e-5 else "failed")
"""


def test_it_loads_the_model_from_the_package_with_the_network_off(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "DJANGO_SETTINGS_MODULE": "smartflow.settings"}
    done = subprocess.run([sys.executable, "-c", OFFLINE], env=env, capture_output=True, text=True,
                          timeout=60, cwd=django_settings.BASE_DIR)
    assert done.stdout.strip() == "loaded", done.stderr
    assert list(home.iterdir()) == []  # nothing downloaded, nothing cached


@pytest.mark.asyncio
async def test_the_model_loads_once_off_the_event_loop(monkeypatch):
    import wordllama

    loads, threads = [], set()
    real_load = wordllama.WordLlama.load

    def counting_load(*args, **kwargs):
        loads.append(threading.current_thread().name)
        time.sleep(1.0)  # a slow load: the loop must keep running meanwhile
        return real_load(*args, **kwargs)

    fresh = semantic._Embedder()
    real_embed = fresh.embed
    monkeypatch.setattr(wordllama.WordLlama, "load", counting_load)
    monkeypatch.setattr(fresh, "embed", lambda text: threads.add(threading.current_thread().name) or real_embed(text))
    monkeypatch.setattr(semantic, "embedder", fresh)

    index = semantic.MemoryIndex()
    ticks = []

    async def tick():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticker = asyncio.ensure_future(tick())
    await asyncio.gather(*(index.add(f"s{n}", "What is the capital of France?", f"k{n}") for n in range(20)))
    ticker.cancel()
    assert len(loads) == 1 and loads[0].startswith("smartflow-embed")
    assert threads and all(name.startswith("smartflow-embed") for name in threads)
    # The real load holds the GIL ~0.1 s (its Rust and numpy parts); the 1 s wait is off the loop
    # (on a busy machine the gap may reach several tenths, never the second a blocked loop shows).
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.9
    assert (await index.search("s3", "What's the capital of France?"))[0] == "k3"


def test_warm_loads_the_model_without_waiting(monkeypatch):
    import wordllama

    real_load = wordllama.WordLlama.load
    monkeypatch.setattr(wordllama.WordLlama, "load", lambda *a, **k: time.sleep(0.5) or real_load(*a, **k))
    fresh = semantic._Embedder()
    started = time.monotonic()
    fresh.warm()
    assert time.monotonic() - started < 0.1 and fresh._model is None
    fresh.pool().submit(lambda: None).result(10)  # the load went first on the one thread
    assert fresh._model is not None


@pytest.mark.asyncio
async def test_without_the_model_there_is_no_semantic_hit(monkeypatch):
    import wordllama

    def broken(*args, **kwargs):
        raise FileNotFoundError("weights missing")

    monkeypatch.setattr(wordllama.WordLlama, "load", broken)
    monkeypatch.setattr(semantic, "embedder", semantic._Embedder())
    index = semantic.MemoryIndex()
    await index.add("scope", "What is the capital of France?", "k")
    assert await index.search("scope", "What is the capital of France?") is None


@pytest.mark.asyncio
async def test_a_dead_redis_is_a_quick_miss():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    index = semantic.RedisIndex(f"redis://127.0.0.1:{port}/0", "dead")
    await semantic.embedder.aembed("the model is loaded before the clock starts")
    started = time.monotonic()
    await index.add("scope", "What is the capital of France?", "k")
    assert await index.search("scope", "What is the capital of France?") is None
    assert await index.search("scope", "What is the capital of France?") is None
    assert time.monotonic() - started < 1.0


@pytest.mark.asyncio
async def test_a_hung_redis_costs_one_timeout_then_nothing():
    connections = []

    async def swallow(reader, writer):  # accepts, reads, never answers
        connections.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    index = semantic.RedisIndex(f"redis://127.0.0.1:{port}/0", "hung")
    await semantic.embedder.aembed("the model is loaded before the clock starts")
    try:
        started = time.monotonic()
        assert await index.search("scope", "What is the capital of France?") is None
        first = time.monotonic() - started
        assert first < semantic.REDIS_TIMEOUT * 3
        started = time.monotonic()
        await index.add("scope", "What is the capital of France?", "k")
        assert await index.search("scope", "What is the capital of France?") is None
        assert time.monotonic() - started < 0.1  # Redis is skipped for REDIS_RETRY_AFTER
    finally:
        for writer in connections:
            writer.close()
        server.close()


@pytest.mark.asyncio
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
async def test_foreign_data_under_the_key_is_no_hit(settings):
    import redis.asyncio

    index = semantic.RedisIndex(os.environ["REDIS_URL"], f"{settings.SMARTFLOW_CACHE_PREFIX}:{uuid.uuid4().hex}")
    client = redis.asyncio.Redis.from_url(os.environ["REDIS_URL"])
    try:
        vectors, keys = index._keys("scope")
        await client.lpush(vectors, b"not a vector")
        await client.lpush(keys, b"k")
        assert await index.search("scope", "What is the capital of France?") is None
    finally:
        await client.aclose()
        await index.aclear()


TEXTS = st.one_of(
    st.text(st.characters(codec=None), max_size=300),  # any code point, lone surrogates and NUL included
    st.sampled_from(["", " ", "\x00", "\x00" * 5000, "😀" * 3000, "\u202e\u200b", "\ud800", "a" * 1_000_000,
                     "What is the capital of France?\x00"]),
)
hostile_index = semantic.MemoryIndex()


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS, scope=st.text(max_size=50))
def test_any_text_neither_raises_nor_blocks(text, scope):
    async def both():
        await hostile_index.add(scope, text, "k")
        found = await hostile_index.search(scope, text)
        assert found is None or (found[0] == "k" and 0.95 <= found[1] <= 1.0)

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(both(), 5))
    assert time.monotonic() - started < 1.0


@pytest.mark.asyncio
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
@pytest.mark.parametrize("text", ["", "\x00", "\ud800", "😀" * 3000, "a" * 1_000_000])
async def test_the_redis_index_takes_any_text(text, settings):
    index = semantic.RedisIndex(os.environ["REDIS_URL"], f"{settings.SMARTFLOW_CACHE_PREFIX}:{uuid.uuid4().hex}")
    try:
        await index.add("\x00scope😀\ud800", text, "k\ud800")
        found = await index.search("\x00scope😀\ud800", text)
        assert found is None if not text else found[0] == "k\ud800"
        assert not index._is_down()
    finally:
        await index.aclear()
