"""Routing policies attacked: odd policy headers, a caller racing others for the one probe (in
process and across two processes through Redis), a client leaving while a stream is held back."""
import asyncio
import subprocess
import time

import httpx
import pytest
from django.conf import settings
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from metrics.tests.helpers import PYTHON, ROOT, child_env
from proxy.routing_policies import breaker

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}
TARGETS = [{"provider": "openai", "model": "gpt-4.1"}, {"provider": "gemini", "model": "gemini-2.5-flash"}]
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=300).filter(
    lambda text: text == text.strip())  # what an HTTP client can send (no edge whitespace)


@hsettings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=HEADER_TEXT)
def test_any_policy_header_is_served_or_refused_with_a_400(gateway, routing_policy, proxy_client, name):
    routing_policy("real", "failover", TARGETS[1:])
    r = proxy_client.post("/v1/chat/completions", json=CHAT, headers={"x-smartflow-policy": name})
    if name == "real":
        assert r.status_code == 200 and r.headers["x-smartflow-provider"] == "gemini"
    elif name == "":  # an empty header is no header: the policy that matches (this one) applies
        assert r.status_code == 200 and r.headers["x-smartflow-provider"] == "gemini"
    else:
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_policy", r.text
        assert len(r.json()["error"]["message"]) < 300  # the name is cut, not echoed whole


def test_a_huge_ab_key_is_only_hashed(gateway, routing_policy, proxy_client):
    routing_policy("ab", "weighted", TARGETS, sticky="user")
    r = proxy_client.post("/v1/chat/completions", json={**CHAT, "user": "u" * 100_000},
                          headers={"x-smartflow-ab-key": "k" * 8000})
    assert r.status_code == 200


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_only_one_of_many_racing_callers_probes_in_process(monkeypatch):
    monkeypatch.setattr(breaker, "OPEN_S", 0.05)
    b = breaker.MemoryBreaker()

    async def race():
        for _ in range(breaker.THRESHOLD):
            await b.failed("openai/gpt-4.1")
        await asyncio.sleep(0.1)
        return await asyncio.gather(*(b.check("openai/gpt-4.1") for _ in range(50)))

    states = run(race())
    assert states.count(breaker.PROBE) == 1 and states.count(breaker.OPEN) == 49


RACER = """
import asyncio, sys, time
import django
django.setup()
from proxy.routing_policies import breaker

async def main(key, at):
    b = breaker.current()
    await b._refresh()
    await asyncio.sleep(max(0.0, float(at) - time.time()))
    print(" ".join(await asyncio.gather(*(b.check(key) for _ in range(20)))))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.skipif(not settings.REDIS_URL, reason="the breaker is shared through Redis (REDIS_URL)")
def test_only_one_of_two_processes_racing_callers_probes(db, monkeypatch):
    key = f"openai/race-{time.time_ns()}"
    b = breaker.RedisBreaker(settings.REDIS_URL, f"{settings.SMARTFLOW_CACHE_PREFIX}:routing")
    monkeypatch.setattr(breaker, "OPEN_S", 4.0)

    async def open_it():
        for _ in range(breaker.THRESHOLD):
            await b.failed(key)

    run(open_it())
    at = time.time() + 4.5  # just after it may be probed, both processes at once
    other = subprocess.Popen([PYTHON, "-c", RACER, key, str(at)], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                             text=True)

    async def mine():
        await b._refresh()
        await asyncio.sleep(max(0.0, at - time.time()))
        return await asyncio.gather(*(b.check(key) for _ in range(20)))

    states = list(run(mine()))
    out, _ = other.communicate(timeout=60)
    states += out.split()
    assert len(states) == 40 and states.count(breaker.PROBE) == 1, states
    assert set(states) == {breaker.PROBE, breaker.OPEN}
    b.reset()


def test_a_client_leaving_while_the_stream_is_held_cancels_the_upstream(gateway, routing_policy, fake_upstream):
    routing_policy("f", "failover", TARGETS)
    role, text = ({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                  for delta in ({"role": "assistant", "content": ""}, {"content": "hi"}))
    fake_upstream.script("openai", stream_events=[role, text], stall_mid_stream=1)  # no content: still held
    with httpx.Client(base_url=gateway.proxy_url, headers={"Authorization": "Bearer sk-sf-test-master-key"}) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json={**CHAT, "stream": True}, timeout=1.0)
    assert fake_upstream.wait_for_disconnects(1)
    assert [r.provider for r in fake_upstream.requests] == ["openai"]  # no failover for a client that left
    assert fake_upstream.disconnects[0].events_sent == 1
