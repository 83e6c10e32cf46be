"""The limits' gate (a reservation left in flight while the request is built), as an attacker or a
failing Redis would test it: what it keeps alive, what a refusal answers on every path, what a
lost script or a client gone mid-wait leaves held, and what the trace says it cost."""
import asyncio
import gc
import threading
import time
import weakref

import httpx
import pytest

from conftest import wait_for
from proxy.tests.test_limits import chat, clock, limited, logs, own_counter, own_redis, post, window_key  # noqa: F401

BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


class Holder:
    """Stands in for a gateway.Call: what the contextvar holds is its bound pass_gate."""
    payload = None

    async def pass_gate(self):
        return None


def _retained_after_request(url: str, use_uvloop: bool) -> tuple[bool, bool]:
    from proxy import upstream

    async def main():
        client = upstream.UpstreamClient()
        holder = Holder()
        ref = weakref.ref(holder)
        response = await client.post_json(url + "/v1/chat/completions", {"authorization": "Bearer sk-openai-test-key",
                                                                       "content-type": "application/json"},
                                          BODY, holder.pass_gate)
        await response.aread()
        await response.aclose()
        del holder, response
        await asyncio.sleep(0.05)
        gc.collect()
        alive_while_pooled = ref() is not None
        await client.aclose()
        await asyncio.sleep(0.05)
        gc.collect()
        return alive_while_pooled, ref() is not None

    if use_uvloop:
        import uvloop
        return uvloop.run(main())
    return asyncio.run(main())


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_a_pooled_upstream_connection_does_not_keep_the_call_that_opened_it(fake_upstream_server, settings,
                                                                              use_uvloop):
    """A connection opened for the call copies the context it is opened in into its reader
    callback: the gate (the Call, with its prompt and the body with the provider's key) must not be
    in it, or it lives as long as the pooled connection."""
    alive_while_pooled, alive_after_close = _retained_after_request(fake_upstream_server.url, use_uvloop)
    assert not alive_after_close
    assert not alive_while_pooled, "the Call is kept alive by the pooled connection's context"


def _busy(url: str, micros: int = 300_000):
    import redis

    return threading.Thread(target=lambda: redis.Redis.from_url(url).eval(
        "local s = redis.call('TIME') repeat local n = redis.call('TIME') "
        f"until (n[1] - s[1]) * 1e6 + (n[2] - s[2]) >= {micros} return 1", 0))


def test_a_client_gone_while_the_lost_script_is_made_again_leaves_no_hold(
        limited, gateway, own_redis, clock, fake_upstream):
    """Redis flushed its scripts and is busy: the reservation in flight is refused (NOSCRIPT) only
    after the client has left, and goes again whole; the holds it then makes are settled, not left
    to wait out their 1 to 1.25 hold lifetimes."""
    import redis

    server, own = own_redis
    url = own.url
    raw, team = limited(rpm_limit=100, tpm_limit=100_000)
    requests, tokens = (window_key(f"t{team.pk}", kind, clock.now) for kind in ("r", "t"))
    assert post(gateway, raw, chat()).status_code == 200  # the script loaded on the gateway's connection
    wait_for(lambda: own_counter(url, tokens)[1] == 0)
    first_use = own_counter(url, tokens)[0]
    redis.Redis.from_url(url).script_flush()
    busy = _busy(url)
    busy.start()
    time.sleep(0.03)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(gateway.proxy_url + "/v1/chat/completions", json=chat(max_tokens=1000),
                   headers={"Authorization": f"Bearer {raw}"}, timeout=0.15)
    busy.join()
    wait_for(lambda: own_counter(url, requests)[0] == 2)  # made again whole: counted once
    wait_for(lambda: own_counter(url, tokens) == (first_use, 0))
    assert len(fake_upstream.requests) == 1
    assert [log.status_code for log in logs(gateway, 2, team)] == [200, 499]


def test_a_streams_overhead_counts_the_wait_for_its_reservation(limited, gateway, own_redis, clock, fake_upstream):
    """The wait for the reservation is the gateway's time, not the provider's, streamed or not:
    overhead_ms counts it though the gate is passed inside the upstream call."""
    server, own = own_redis
    raw, team = limited(rpm_limit=100)
    assert post(gateway, raw, chat()).status_code == 200
    for stream in (False, True):
        busy = _busy(own.url, 200_000)
        busy.start()
        time.sleep(0.03)
        r = post(gateway, raw, chat(stream=stream))
        assert r.status_code == 200
        busy.join()
    found = logs(gateway, 3, team)
    one_body, streamed = found[1], found[2]
    limits_ms = {s["name"]: s["ms"] for s in streamed.stages}.get("limits")
    assert one_body.overhead_ms > 100
    assert limits_ms and limits_ms > 100  # the wait, recorded as the limits stage
    assert streamed.overhead_ms > 100, (streamed.overhead_ms, streamed.stages)


CLAUDE_THEN_GPT = [{"provider": "anthropic", "model": "claude-sonnet-4-6"}, {"provider": "openai", "model": "gpt-4.1"}]


def claude_post(gateway, raw, **extra):
    return httpx.post(gateway.proxy_url + "/v1/messages", timeout=10, headers={"x-api-key": raw},
                      json={"model": "claude-sonnet-4-6", "max_tokens": 5,
                            "messages": [{"role": "user", "content": "hi"}], **extra})


def test_refusals_on_every_path_never_reach_the_provider(limited, gateway, own_redis, clock, fake_upstream,
                                                         routing_policy, settings):
    """The gate's refusal is the answer on the native Anthropic stream and under a routing policy
    (one body and stream): nothing reaches the provider."""
    raw, team = limited(rpm_limit=2)
    assert post(gateway, raw, chat()).status_code == 200  # loads the script
    assert claude_post(gateway, raw).status_code == 200  # native pass-through, second of 2
    r = claude_post(gateway, raw, stream=True)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error", r.text
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    routing_policy("claude-then-gpt", "failover", CLAUDE_THEN_GPT, retry={"attempts": 0, "backoff_ms": 0})
    for stream in (False, True):
        r = post(gateway, raw, chat(stream=stream))
        assert r.status_code == 429 and r.headers["content-type"].startswith("application/json"), r.text
    assert len(fake_upstream.requests) == 2
    assert [log.status_code for log in logs(gateway, 5, team)] == [200, 200, 429, 429, 429]


def test_a_refused_request_is_not_served_a_cache_hit(limited, gateway, own_redis, clock, fake_upstream, settings):
    from proxy.cache import store as stores

    settings.SMARTFLOW_CACHE = "exact"
    stores.current().clear()
    raw, _ = limited(rpm_limit=2)
    body = chat("a cached question")
    assert post(gateway, raw, body).status_code == 200
    wait_for(lambda: stores.current().stats()["entries"] >= 1)
    hit = post(gateway, raw, body)
    assert hit.status_code == 200 and hit.headers["x-smartflow-cache"] == "HIT"
    for stream in (False, True):
        r = post(gateway, raw, {**body, "stream": stream})
        assert r.status_code == 429 and r.headers.get("x-smartflow-cache") != "HIT", r.text
    assert len(fake_upstream.requests) == 1
    stores.current().clear()


def test_a_refusal_tells_no_upstream_attempt(limited, gateway, own_redis, clock, fake_upstream):
    """Refused inside the upstream call, before anything was sent: no attempt was made."""
    raw, _ = limited(rpm_limit=1)
    assert post(gateway, raw, chat()).status_code == 200
    for stream in (False, True):
        r = post(gateway, raw, chat(stream=stream))
        assert r.status_code == 429
        assert r.headers["x-smartflow-attempts"] == "0", (stream, r.headers["x-smartflow-attempts"])
