"""The circuit breaker across real wires: opening after 5 failover conditions, skipping, one probe
while the others skip, closing and reopening; shared by two processes through Redis; /metrics."""
import subprocess
import threading
import time

import httpx
import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from conftest import MASTER_KEY, free_port
from metrics.tests.helpers import PYTHON, ROOT, child_env
from proxy.routing_policies import breaker

CHAT = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hello"}]}
TARGETS = [{"provider": "anthropic", "model": "claude-sonnet-4-6"}, {"provider": "openai", "model": "gpt-4.1"}]
CLAUDE = "anthropic/claude-sonnet-4-6"


@pytest.fixture
def policy(routing_policy, monkeypatch):
    monkeypatch.setattr(breaker, "OPEN_S", 1.0)
    return routing_policy("p", "failover", TARGETS, retry={"attempts": 0, "backoff_ms": 0})


def post(client):
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    return r


def served(r):
    return r.headers["x-smartflow-provider"]


def anthropic_calls(fake):
    return len(fake.requests_for("anthropic"))


def open_circuit(client, fake):
    fake.script("anthropic", status=529, times=breaker.THRESHOLD)
    assert [served(post(client)) for _ in range(breaker.THRESHOLD)] == ["openai"] * breaker.THRESHOLD


def metric(gateway, name, **labels) -> float:
    text = httpx.get(f"{gateway.management_url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_it_opens_after_five_failures_and_skips_the_target(policy, proxy_client, gateway, fake_upstream):
    failovers = metric(gateway, "smartflow_failovers_total", **{"from": "anthropic", "to": "openai"})
    open_circuit(proxy_client, fake_upstream)
    r = post(proxy_client)
    assert served(r) == "openai" and anthropic_calls(fake_upstream) == breaker.THRESHOLD  # skipped: not called
    log = gateway.log(r.headers["x-smartflow-request-id"])
    assert [hop["provider"] for hop in log.routing["chain"]] == ["openai"] and log.routing["fallback_used"] is True
    assert "circuit open" in log.routing["reason"] and r.headers["x-smartflow-attempts"] == "1"
    assert metric(gateway, "smartflow_breaker_open", provider="anthropic") == 1
    assert metric(gateway, "smartflow_breaker_open", provider="openai") == 0
    gateway.flush_traces()
    assert metric(gateway, "smartflow_failovers_total", **{"from": "anthropic", "to": "openai"}) \
        == failovers + breaker.THRESHOLD


def test_four_failures_do_not_open_it(policy, proxy_client, gateway, fake_upstream):
    fake_upstream.script("anthropic", status=529, times=breaker.THRESHOLD - 1)
    for _ in range(breaker.THRESHOLD - 1):
        post(proxy_client)
    assert served(post(proxy_client)) == "anthropic"


def test_one_probe_closes_it_while_the_others_skip(policy, proxy_client, gateway, fake_upstream):
    open_circuit(proxy_client, fake_upstream)
    time.sleep(breaker.OPEN_S + 0.1)
    fake_upstream.script("anthropic", delay=0.5)  # the probe takes a while ...
    results = {}
    probe = threading.Thread(target=lambda: results.setdefault("probe", post(proxy_client)))
    probe.start()
    time.sleep(0.2)
    with httpx.Client(base_url=gateway.proxy_url, headers={"Authorization": f"Bearer {MASTER_KEY}"}) as other:
        during = post(other)  # ... and meanwhile another request skips the target
    probe.join()
    assert served(results["probe"]) == "anthropic" and served(during) == "openai"
    assert anthropic_calls(fake_upstream) == breaker.THRESHOLD + 1
    assert served(post(proxy_client)) == "anthropic"  # closed again
    assert metric(gateway, "smartflow_breaker_open", provider="anthropic") == 0


def test_a_failed_probe_opens_it_again(policy, proxy_client, gateway, fake_upstream):
    open_circuit(proxy_client, fake_upstream)
    time.sleep(breaker.OPEN_S + 0.1)
    fake_upstream.script("anthropic", status=503)
    assert served(post(proxy_client)) == "openai"  # the probe failed over
    assert anthropic_calls(fake_upstream) == breaker.THRESHOLD + 1
    assert served(post(proxy_client)) == "openai" and anthropic_calls(fake_upstream) == breaker.THRESHOLD + 1


def test_a_client_error_does_not_count(policy, proxy_client, fake_upstream):
    fake_upstream.script("anthropic", status=400, times=breaker.THRESHOLD + 1)
    for _ in range(breaker.THRESHOLD + 1):
        assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 400
    assert served(post(proxy_client)) == "anthropic"


def test_a_pinned_request_ignores_an_open_circuit(policy, proxy_client, fake_upstream):
    open_circuit(proxy_client, fake_upstream)
    r = proxy_client.post("/v1/chat/completions", json=CHAT, headers={"x-smartflow-provider": "anthropic"})
    assert r.status_code == 200 and served(r) == "anthropic"


def test_every_target_open_is_a_502_naming_the_circuits(routing_policy, proxy_client, gateway, fake_upstream,
                                                         monkeypatch):
    routing_policy("solo", "failover", TARGETS[:1], retry={"attempts": 0})
    fake_upstream.script("anthropic", status=529, times=breaker.THRESHOLD)
    for _ in range(breaker.THRESHOLD):
        assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 502
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502 and "circuit open" in r.json()["error"]["message"]
    assert anthropic_calls(fake_upstream) == breaker.THRESHOLD
    log = gateway.log(r.headers["x-smartflow-request-id"])
    assert log.routing["chain"] == [] and log.status_code == 502


# --- two processes sharing it through Redis ---------------------------------------------

OTHER_PROCESS = """
import asyncio, sys
import django
django.setup()
from proxy.routing_policies import breaker

async def main(action, key):
    b = breaker.current()
    assert b.backend == "redis", b.backend
    if action == "fail":
        for _ in range(breaker.THRESHOLD):
            await b.failed(key)
    print(await b.check(key))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def other_process(action: str, key: str) -> str:
    done = subprocess.run([PYTHON, "-c", OTHER_PROCESS, action, key], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not settings.REDIS_URL, reason="the breaker is shared through Redis (REDIS_URL)")
def test_two_processes_share_it_through_redis(routing_policy, proxy_client, gateway, fake_upstream):
    routing_policy("p", "failover", TARGETS, retry={"attempts": 0})  # circuits open for the full 30 s
    open_circuit(proxy_client, fake_upstream)  # opened by this process's failures ...
    assert other_process("check", CLAUDE) == "open"  # ... is open for the other process
    routing_policy("p", "failover", [{"provider": "openai", "model": "gpt-4.1"},
                                     {"provider": "gemini", "model": "gemini-2.5-flash"}], retry={"attempts": 0})
    assert other_process("fail", "openai/gpt-4.1") == "open"  # the other process opens one ...
    deadline = time.monotonic() + breaker.SYNC_S + 2
    while served(post(proxy_client)) != "gemini":  # ... and within the mirror's refresh this one skips it
        assert time.monotonic() < deadline, "the other process's open circuit was never seen"
        time.sleep(0.1)
    assert metric(gateway, "smartflow_breaker_open", provider="openai") == 1


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis to take away")
def test_a_dead_redis_never_fails_a_request(policy, proxy_client, settings, fake_upstream):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    fake_upstream.script("anthropic", status=529, times=breaker.THRESHOLD + 1)
    for _ in range(breaker.THRESHOLD + 1):
        assert served(post(proxy_client)) == "openai"  # failed over; the breaker just records nothing
    assert breaker.current().backend == "redis"


def test_a_probe_answered_with_a_client_error_closes_it(policy, proxy_client, fake_upstream):
    open_circuit(proxy_client, fake_upstream)
    time.sleep(breaker.OPEN_S + 0.1)
    fake_upstream.script("anthropic", status=400)
    assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 400  # the probe: it answered
    assert served(post(proxy_client)) == "anthropic"  # so it is closed, not left probing
