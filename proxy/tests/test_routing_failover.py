"""Failover under a routing policy across real wires: the live gateway, the fake provider scripted
to fail, the real openai and anthropic SDKs. Each condition and each non-condition, one body and
streamed, both client formats, retries and backoff (timed), and every trace's chain."""
import time

import anthropic
import httpx
import openai
import pytest

from conftest import free_port
from tests.fake_upstream import ECHO_PREFIX, anthropic_error

CHAT = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hello"}]}
MESSAGES = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}
CLAUDE_THEN_GPT = [{"provider": "anthropic", "model": "claude-sonnet-4-6"}, {"provider": "openai", "model": "gpt-4.1"}]


@pytest.fixture
def failover(routing_policy):
    return routing_policy("claude-then-gpt", "failover", CLAUDE_THEN_GPT, retry={"attempts": 0, "backoff_ms": 0})


@pytest.fixture
def sdk(gateway, master_key):
    return openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=master_key, max_retries=0)


@pytest.fixture
def claude(gateway, master_key):
    return anthropic.Anthropic(base_url=gateway.proxy_url, api_key=master_key, max_retries=0)


def calls(fake, provider):
    return len(fake.requests_for(provider))


def log_of(gateway, response):
    return gateway.log(response.headers["x-smartflow-request-id"])


def chain_of(log):
    return [(hop["provider"], hop["model"], hop["status"]) for hop in log.routing["chain"]]


# --- the conditions that fail over, one body -------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 529])
def test_it_fails_over_on_each_condition(failover, sdk, gateway, fake_upstream, status):
    fake_upstream.script("anthropic", status=status, delay=0.2)
    raw = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert float(raw.headers["x-smartflow-overhead-ms"]) < 100  # the failed attempt's 0.2 s is upstream time
    answer = raw.parse()
    assert answer.model == "claude-sonnet-4-6"  # the client's own model, whoever served it
    assert answer.choices[0].message.content == ECHO_PREFIX + "hello"
    assert raw.headers["x-smartflow-provider"] == "openai" and raw.headers["x-smartflow-model"] == "gpt-4.1"
    assert raw.headers["x-smartflow-attempts"] == "2"
    assert (calls(fake_upstream, "anthropic"), calls(fake_upstream, "openai")) == (1, 1)
    assert fake_upstream.requests_for("openai")[0].json["model"] == "gpt-4.1"  # translated for OpenAI
    log = gateway.log(raw.headers["x-smartflow-request-id"])
    assert chain_of(log) == [("anthropic", "claude-sonnet-4-6", status), ("openai", "gpt-4.1", 200)]
    assert log.routing["fallback_used"] is True and log.routing["policy"] == "claude-then-gpt"
    assert log.routing["strategy"] == "failover" and log.routing["chain"][0]["error"]
    assert (log.provider, log.upstream_model, log.status_code) == ("openai", "gpt-4.1", 200)
    assert all(hop["ms"] >= 0 for hop in log.routing["chain"])


def test_it_fails_over_on_a_timeout(failover, sdk, gateway, fake_upstream, settings):
    settings.SMARTFLOW_UPSTREAM_TIMEOUT = 0.5
    fake_upstream.script("anthropic", delay=3)
    started = time.monotonic()
    raw = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert 0.5 <= time.monotonic() - started < 2.5
    assert raw.headers["x-smartflow-provider"] == "openai"
    assert chain_of(log_of(gateway, raw)) == [("anthropic", "claude-sonnet-4-6", "timeout"), ("openai", "gpt-4.1", 200)]


def test_it_fails_over_when_the_provider_cannot_be_reached(failover, sdk, gateway, fake_upstream, settings):
    settings.SMARTFLOW_BASE_URLS = {**settings.SMARTFLOW_BASE_URLS, "anthropic": f"http://127.0.0.1:{free_port()}"}
    raw = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert raw.headers["x-smartflow-provider"] == "openai"
    assert chain_of(log_of(gateway, raw)) == [("anthropic", "claude-sonnet-4-6", "connect"), ("openai", "gpt-4.1", 200)]


# --- the non-conditions --------------------------------------------------------------------


@pytest.mark.parametrize("status,client_status", [(400, 400), (404, 404), (413, 413), (422, 400)])
def test_a_client_error_never_fails_over(failover, proxy_client, gateway, fake_upstream, status, client_status):
    fake_upstream.script("anthropic", status=status)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == client_status, r.text
    assert (calls(fake_upstream, "anthropic"), calls(fake_upstream, "openai")) == (1, 0)
    log = log_of(gateway, r)
    assert chain_of(log) == [("anthropic", "claude-sonnet-4-6", status)] and log.routing["fallback_used"] is False
    assert r.headers["x-smartflow-attempts"] == "1"


def test_a_status_left_out_of_failover_on_reaches_the_client(routing_policy, proxy_client, fake_upstream):
    routing_policy("only-529", "failover", CLAUDE_THEN_GPT, failover_on=[529])
    fake_upstream.script("anthropic", status=500)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert calls(fake_upstream, "openai") == 0


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_fails_over_without_retrying_that_target(routing_policy, proxy_client, gateway, fake_upstream,
                                                               status):
    routing_policy("p", "failover", CLAUDE_THEN_GPT, retry={"attempts": 3, "backoff_ms": 0})
    fake_upstream.script("anthropic", status=status)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.headers["x-smartflow-provider"] == "openai"
    assert (calls(fake_upstream, "anthropic"), calls(fake_upstream, "openai")) == (1, 1)


def test_refused_keys_everywhere_are_a_502(failover, proxy_client, gateway, fake_upstream):
    fake_upstream.script("anthropic", status=401)
    fake_upstream.script("openai", status=401)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_auth_error"
    assert chain_of(log_of(gateway, r)) == [("anthropic", "claude-sonnet-4-6", 401), ("openai", "gpt-4.1", 401)]


def test_when_every_target_fails_the_last_failure_reaches_the_client(failover, proxy_client, gateway, fake_upstream):
    fake_upstream.script("anthropic", status=529)
    fake_upstream.script("openai", status=503)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_overloaded"
    log = log_of(gateway, r)
    assert log.status_code == 502 and len(log.routing["chain"]) == 2 and log.routing["fallback_used"] is False


@pytest.fixture
def without_anthropic_key(settings):
    from proxy import keystore

    settings.SMARTFLOW_PROVIDER_KEYS = {**settings.SMARTFLOW_PROVIDER_KEYS, "anthropic": ""}
    keystore.provider_keys.invalidate()
    keystore.provider_keys.get_sync()
    yield
    settings.SMARTFLOW_PROVIDER_KEYS = {**settings.SMARTFLOW_PROVIDER_KEYS, "anthropic": "sk-ant-test-key"}
    keystore.provider_keys.invalidate()
    keystore.provider_keys.get_sync()  # the next test's first request must not see the stale keys


def test_a_target_without_a_provider_key_is_skipped(failover, proxy_client, gateway, fake_upstream,
                                                    without_anthropic_key):
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.headers["x-smartflow-provider"] == "openai"
    assert calls(fake_upstream, "anthropic") == 0
    assert "no API key" in log_of(gateway, r).routing["reason"]


# --- retries and backoff ------------------------------------------------------------------


def test_a_target_is_retried_with_a_bounded_backoff(routing_policy, proxy_client, gateway, fake_upstream):
    routing_policy("p", "failover", CLAUDE_THEN_GPT, retry={"attempts": 2, "backoff_ms": 100})
    fake_upstream.script("anthropic", status=529, times=2)
    started = time.monotonic()
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and r.headers["x-smartflow-provider"] == "anthropic", log_of(gateway, r).routing
    assert r.headers["x-smartflow-attempts"] == "3" and calls(fake_upstream, "openai") == 0
    first, second, third = (req.received_at for req in fake_upstream.requests_for("anthropic"))
    # Full jitter: the n-th pause is drawn from [0, 100 ms * 2**n].
    assert second - first < 0.1 + 0.05 and third - second < 0.2 + 0.05 and elapsed < 1.0
    log = log_of(gateway, r)
    assert chain_of(log) == [("anthropic", "claude-sonnet-4-6", 529)] * 2 + [("anthropic", "claude-sonnet-4-6", 200)]
    assert log.routing["fallback_used"] is False


def test_the_upstreams_retry_after_is_honoured(routing_policy, proxy_client, fake_upstream):
    routing_policy("p", "failover", CLAUDE_THEN_GPT, retry={"attempts": 1, "backoff_ms": 0})
    fake_upstream.script("anthropic", status=429, headers={"retry-after": "1"})
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.headers["x-smartflow-provider"] == "anthropic"
    first, second = (req.received_at for req in fake_upstream.requests_for("anthropic"))
    assert 1.0 <= second - first < 1.5
    assert float(r.headers["x-smartflow-overhead-ms"]) < 100  # the pause is the upstream's, not the gateway's


def test_a_retry_after_longer_than_the_time_left_fails_over_at_once(routing_policy, proxy_client, gateway,
                                                                     fake_upstream, settings):
    settings.SMARTFLOW_ROUTING_TIMEOUT = 3
    routing_policy("p", "failover", CLAUDE_THEN_GPT, retry={"attempts": 1, "backoff_ms": 0})
    fake_upstream.script("anthropic", status=429, headers={"retry-after": "30"})
    started = time.monotonic()
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert time.monotonic() - started < 1.0
    assert r.status_code == 200 and r.headers["x-smartflow-provider"] == "openai"
    assert "outlast" in log_of(gateway, r).routing["reason"]


def test_the_retry_budget_caps_retries_of_a_target(routing_policy, proxy_client, gateway, fake_upstream):
    from proxy.routing_policies import budget

    routing_policy("p", "failover", CLAUDE_THEN_GPT, retry={"attempts": 1, "backoff_ms": 0})
    served = []
    for _ in range(budget.FLOOR + 1):
        fake_upstream.script("anthropic", status=529)  # each request's first try fails; a retry would succeed
        r = proxy_client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        served.append(r.headers["x-smartflow-provider"])
    assert served == ["anthropic"] * budget.FLOOR + ["openai"]
    assert "retry budget" in log_of(gateway, r).routing["reason"]


# --- streams ------------------------------------------------------------------------------


def test_a_stream_fails_over_before_its_first_byte(failover, sdk, gateway, fake_upstream):
    fake_upstream.script("anthropic", status=529, delay=0.3)
    with sdk.chat.completions.with_streaming_response.create(**CHAT, stream=True) as raw:
        assert raw.headers["x-smartflow-provider"] == "openai" and raw.headers["x-smartflow-attempts"] == "2"
        assert float(raw.headers["x-smartflow-overhead-ms"]) < 100  # the failed attempt's 0.3 s is upstream time
        chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ECHO_PREFIX + "hello"
    assert {c.model for c in chunks} == {"claude-sonnet-4-6"}
    log = log_of(gateway, raw)
    assert chain_of(log) == [("anthropic", "claude-sonnet-4-6", 529), ("openai", "gpt-4.1", 200)]
    assert log.status_code == 200 and log.stream is True and log.response["choices"][0]["message"]["content"]


def test_an_error_inside_a_200_streams_first_events_fails_over(failover, sdk, gateway, fake_upstream):
    fake_upstream.script("anthropic", stream_events=[
        b"event: message_start\ndata: " + httpx.Response(200, json={
            "type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                                 "model": "claude-sonnet-4-6", "stop_reason": None,
                                                 "usage": {"input_tokens": 3, "output_tokens": 0}}}).content + b"\n\n",
        b"event: error\ndata: " + httpx.Response(200, json=anthropic_error("overloaded_error", "Overloaded")).content
        + b"\n\n"])
    chunks = list(sdk.chat.completions.create(**CHAT, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ECHO_PREFIX + "hello"
    log = gateway.log(chunks[0].id.removeprefix("chatcmpl-"))
    assert chain_of(log) == [("anthropic", "claude-sonnet-4-6", 529), ("openai", "gpt-4.1", 200)]


def test_a_stream_never_fails_over_once_content_reached_the_client(failover, proxy_client, gateway, fake_upstream):
    fake_upstream.script("anthropic", fail_mid_stream=True)
    with proxy_client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        body = b"".join(r.iter_bytes())
    assert r.status_code == 200 and b"echo" in body and b'"error"' in body  # the in-band error ends it
    assert calls(fake_upstream, "openai") == 0
    log = log_of(gateway, r)
    assert chain_of(log) == [("anthropic", "claude-sonnet-4-6", 200)] and log.status_code == 502


def test_a_client_error_in_a_stream_never_fails_over(failover, proxy_client, gateway, fake_upstream):
    fake_upstream.script("anthropic", status=400)
    r = proxy_client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 400 and calls(fake_upstream, "openai") == 0


# --- the Anthropic client format -----------------------------------------------------------


def test_an_anthropic_client_fails_over_to_openai_in_its_own_format(failover, claude, gateway, fake_upstream):
    fake_upstream.script("anthropic", status=529)
    raw = claude.messages.with_raw_response.create(**MESSAGES)
    message = raw.parse()
    assert message.model == "claude-sonnet-4-6" and message.content[0].text == ECHO_PREFIX + "hello"
    assert raw.headers["x-smartflow-provider"] == "openai"
    first, second = fake_upstream.requests
    assert first.provider == "anthropic" and first.json["messages"] == MESSAGES["messages"]  # its own body
    assert second.provider == "openai" and second.json["messages"] == [{"role": "user", "content": "hello"}]
    assert chain_of(log_of(gateway, raw)) == [("anthropic", "claude-sonnet-4-6", 529), ("openai", "gpt-4.1", 200)]


def test_an_anthropic_client_stream_fails_over(failover, claude, gateway, fake_upstream):
    fake_upstream.script("anthropic", status=529)
    with claude.messages.stream(**MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ECHO_PREFIX + "hello" and final.model == "claude-sonnet-4-6"
    assert (calls(fake_upstream, "anthropic"), calls(fake_upstream, "openai")) == (1, 1)


def test_an_openai_client_failing_over_to_anthropic_is_translated(routing_policy, sdk, fake_upstream):
    routing_policy("gpt-then-claude", "failover", list(reversed(CLAUDE_THEN_GPT)), retry={"attempts": 0})
    fake_upstream.script("openai", status=503)
    answer = sdk.chat.completions.create(model="gpt-4.1", messages=CHAT["messages"])
    assert answer.model == "gpt-4.1" and answer.choices[0].message.content == ECHO_PREFIX + "hello"
    sent = fake_upstream.requests_for("anthropic")[0].json
    assert sent["model"] == "claude-sonnet-4-6" and sent["max_tokens"] > 0


def test_a_target_without_a_model_gets_the_same_tier(routing_policy, proxy_client, gateway, fake_upstream):
    routing_policy("tiered", "failover", [{"provider": "anthropic"}, {"provider": "gemini"}], retry={"attempts": 0})
    fake_upstream.script("anthropic", status=529)
    r = proxy_client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4.1-mini"})
    assert r.status_code == 200 and r.headers["x-smartflow-provider"] == "gemini"
    log = log_of(gateway, r)
    assert log.routing["chain"][0]["model"].startswith("claude-haiku")  # gpt-4.1-mini is a fast model
    assert "flash" in log.routing["chain"][1]["model"]
