"""Upstream failures told truthfully, over real sockets: dropped and reset connections, cut and
stalled streams, answers of the wrong shape, and clients that leave before the answer."""
import json
import socket
import time

import openai
import pytest

from conftest import wait_for
from tests.fake_upstream import anthropic_error

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}
MESSAGES = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}
PROVIDERS = ["openai", "anthropic", "gemini", "ollama"]


@pytest.fixture
def sdk(gateway, master_key):
    return openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=master_key, max_retries=0)


def pinned(provider):
    return {"x-smartflow-provider": provider}


def log_of(gateway, response):
    return gateway.log(response.headers["x-smartflow-request-id"])


def fresh_pool(gateway):
    """Drops the gateway's pooled upstream connections: its next call opens a new one."""
    from proxy import upstream

    gateway.run(upstream.close())


# Connections the provider closed or reset


@pytest.mark.parametrize("reset", [False, True])
def test_a_pooled_connection_the_provider_closed_is_sent_again_once(gateway, proxy_client, fake_upstream, reset):
    assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 200  # a connection in the pool
    fake_upstream.script("openai", drop=True, reset=reset)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: hello"
    assert fake_upstream.dropped == ["openai"] and len(fake_upstream.requests) == 2  # warm-up, then the resend
    assert log_of(gateway, r).status_code == 200


def test_it_is_sent_again_only_once(gateway, proxy_client, fake_upstream):
    assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 200
    fake_upstream.script("openai", drop=True, times=2)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    assert fake_upstream.dropped == ["openai", "openai"]


@pytest.mark.parametrize("reset,message", [(False, "openai: the provider closed the connection without answering."),
                                           (True, "openai: the provider reset the connection.")])
def test_a_fresh_connection_closed_unanswered_is_a_502_saying_so(gateway, proxy_client, fake_upstream, reset,
                                                                 message):
    fresh_pool(gateway)
    fake_upstream.script("openai", drop=True, reset=reset)
    started = time.monotonic()
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert time.monotonic() - started < 2
    assert r.status_code == 502, r.text  # not 504 "no answer within 600 s"
    assert r.json()["error"] == {"message": message, "type": "api_error", "param": None,
                                 "code": "upstream_unavailable"}
    assert fake_upstream.dropped == ["openai"]  # it may have reached the provider: not sent again
    log = log_of(gateway, r)
    assert (log.status_code, log.error) == (502, message)


def test_an_unreachable_provider_is_a_502_naming_the_cause(gateway, proxy_client, settings):
    from conftest import free_port

    settings.SMARTFLOW_BASE_URLS = {**settings.SMARTFLOW_BASE_URLS, "openai": f"http://127.0.0.1:{free_port()}/v1"}
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502
    assert r.json()["error"]["message"] == ("openai: could not connect to the provider (ConnectionRefusedError). "
                                            "Check SMARTFLOW_OPENAI_BASE_URL.")


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("path,body", [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGES)])
def test_an_answer_cut_mid_body_is_a_502_saying_so(gateway, proxy_client, fake_upstream, reset, path, body):
    fake_upstream.script("anthropic", fail_mid_stream=True, reset=reset)
    r = proxy_client.post(path, json=body, headers=pinned("anthropic"))
    assert r.status_code == 502, r.text
    message = "anthropic: the answer was cut off: the connection broke in the middle of it."
    assert message in r.text
    assert len(fake_upstream.requests) == 1  # an answer had begun: never sent again
    log = log_of(gateway, r)
    assert (log.status_code, log.error) == (502, message)


# Answers of the wrong shape

MALFORMED = {
    "openai": [{}, {"choices": []}, {"choices": "none"}, {"choices": [{"message": "hi"}]},
               {"choices": [{"message": {"content": 42}}]}, {"choices": [{"index": 0}]}],
    "anthropic": [{}, {"type": "message", "content": "hi"}, {"content": [{"type": "text", "text": 42}]},
                  {"content": ["hi"]}],
    "gemini": [{}, {"candidates": "none"}, {"candidates": [{"content": {"parts": [{"text": 42}]}}]},
               {"candidates": [{"content": "hi"}]}],
    "ollama": [{}, {"message": "hi"}, {"message": {"content": 42}}, {"message": {"tool_calls": [1]}}],
}


@pytest.mark.parametrize("provider,body", [(p, b) for p, bodies in MALFORMED.items() for b in bodies])
@pytest.mark.parametrize("path,request_body", [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGES)])
def test_a_200_not_in_the_providers_format_is_a_502_naming_it(gateway, proxy_client, fake_upstream, provider,
                                                             body, path, request_body):
    fake_upstream.script(provider, body=body)
    r = proxy_client.post(path, json=request_body, headers=pinned(provider))
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["message"].startswith(f"{provider}: the provider's answer is not in its documented format")
    assert error["type"] == "api_error"
    log = log_of(gateway, r)
    assert log.status_code == 502 and log.error == error["message"]


@pytest.mark.parametrize("body", [[1, 2], "<html>It works!</html>"])
@pytest.mark.parametrize("path,request_body", [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGES)])
def test_a_200_that_is_not_a_json_object_is_a_502_naming_the_provider(gateway, proxy_client, fake_upstream, body,
                                                                      path, request_body):
    fake_upstream.script("openai", body=body)
    r = proxy_client.post(path, json=request_body, headers=pinned("openai"))
    message = "openai: the provider answered with a body that is not a JSON object."
    assert r.status_code == 502 and message in r.text
    assert log_of(gateway, r).status_code == 502


@pytest.mark.parametrize("provider,event", [
    ("openai", {"choices": "none"}), ("openai", "data: [1, 2]\n\n"), ("openai", "data: {not json\n\n"),
    ("anthropic", {"type": "content_block_delta", "delta": "hi"}),
    ("gemini", {"candidates": [{"content": {"parts": [{"text": 42}]}}]}),
    ("ollama", {"message": {"content": ["hi"]}, "done": False})])
def test_a_stream_event_of_the_wrong_shape_ends_the_stream_with_an_error_naming_the_provider(
        gateway, proxy_client, fake_upstream, provider, event):
    fake_upstream.script(provider, stream_events=[event])
    with proxy_client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                             headers=pinned(provider)) as r:
        text = r.read().decode()
    assert r.status_code == 200  # the stream had begun
    last = [line for line in text.split("\n") if line.startswith("data: ")][-1]
    error = json.loads(last[len("data: "):])["error"]
    assert error["message"].startswith(f"{provider}: the provider's stream event is not in its documented format")
    assert "[DONE]" not in text
    log = log_of(gateway, r)
    assert log.status_code == 502 and log.error == error["message"]


# Cut and stalled streams

def cut_events(provider):
    """A stream that ends cleanly but before its end marker (no finish reason / done / message_delta)."""
    return {
        "openai": [{"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Half an"},
                                 "finish_reason": None}]}],
        "anthropic": [{"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant",
                                                           "model": "claude-sonnet-4-6", "content": [],
                                                           "usage": {"input_tokens": 3, "output_tokens": 1}}},
                      {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                      {"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": "Half an"}}],
        "gemini": [{"candidates": [{"content": {"role": "model", "parts": [{"text": "Half an"}]}, "index": 0}]}],
        "ollama": [{"model": "llama3.2", "message": {"role": "assistant", "content": "Half an"}, "done": False}],
    }[provider]


END_MARKERS = {"openai": "a finish_reason", "anthropic": "message_delta", "ollama": '"done": true'}
# Gemini is left out: PROVIDERS.md §5.4 finishes a body without a finishReason with "stop"
# (the fixture gemini/stream_no_finish_reason.json).
CUT_PROVIDERS = list(END_MARKERS)


@pytest.mark.parametrize("provider", CUT_PROVIDERS)
def test_a_stream_that_ends_before_its_finish_is_cut_not_stopped(gateway, sdk, fake_upstream, provider):
    fake_upstream.script(provider, stream_events=cut_events(provider))
    stream = sdk.chat.completions.create(**CHAT, stream=True, extra_headers=pinned(provider))
    seen, finishes = [], []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
            finishes.extend(c.finish_reason for c in chunk.choices if c.finish_reason)
    message = f"{provider}: the answer was cut off: the stream ended before {END_MARKERS[provider]}."
    assert "".join(seen) == "Half an" and finishes == [] and message in str(err.value)
    log = gateway.log(stream.response.headers["x-smartflow-request-id"])
    assert log.status_code == 502 and log.error.startswith(message)
    assert log.response["choices"][0]["message"]["content"] == "Half an"


@pytest.mark.parametrize("provider", CUT_PROVIDERS)
def test_a_cut_stream_ends_with_an_error_event_for_anthropic_clients_too(gateway, proxy_client, fake_upstream,
                                                                        provider):
    fake_upstream.script(provider, stream_events=cut_events(provider))
    with proxy_client.stream("POST", "/v1/messages", json={**MESSAGES, "stream": True},
                             headers=pinned(provider)) as r:
        text = r.read().decode()
    events = [block.split("\n")[0] for block in text.strip().split("\n\n")]
    assert events[-1] == "event: error" and "event: message_stop" not in events
    error = json.loads(text.strip().split("\n\n")[-1].split("data: ", 1)[1])["error"]
    assert error == {"type": "api_error",
                     "message": f"{provider}: the answer was cut off: the stream ended before "
                                f"{END_MARKERS[provider]}."}
    assert log_of(gateway, r).status_code == 502


@pytest.mark.parametrize("provider", ["openai", "ollama"])
@pytest.mark.parametrize("reset", [False, True])
def test_a_stream_whose_connection_breaks_is_cut(gateway, proxy_client, fake_upstream, provider, reset):
    fake_upstream.script(provider, fail_mid_stream=2, reset=reset)
    with proxy_client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                             headers=pinned(provider)) as r:
        text = r.read().decode()
    message = f"{provider}: the answer was cut off: the connection broke in the middle of it."
    assert "echo" in text and "[DONE]" not in text and '"finish_reason":"stop"' not in text
    assert json.loads(text.strip().split("\n\n")[-1][len("data: "):])["error"]["message"] == message
    log = log_of(gateway, r)
    assert log.status_code == 502 and log.error.startswith(message)


def test_a_stream_that_stalls_past_the_timeout_is_a_504(gateway, proxy_client, fake_upstream, settings):
    settings.SMARTFLOW_UPSTREAM_TIMEOUT = 0.5
    fake_upstream.script("openai", stall_mid_stream=2)
    with proxy_client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        text = r.read().decode()
    error = json.loads(text.strip().split("\n\n")[-1][len("data: "):])["error"]
    assert error["code"] == "upstream_timeout"
    assert error["message"] == "openai: no complete answer within the timeout (0.5 s)."
    log = log_of(gateway, r)
    assert log.status_code == 504 and log.error.startswith(error["message"])
    assert fake_upstream.wait_for_disconnects(1)  # the stalled upstream call was closed


def test_an_in_band_error_is_recorded_with_the_status_the_client_format_gives_it(gateway, proxy_client,
                                                                                  fake_upstream):
    overloaded = {"type": "error", "error": anthropic_error("overloaded_error", "Overloaded")["error"]}
    fake_upstream.script("anthropic", stream_events=cut_events("anthropic") + [overloaded])
    with proxy_client.stream("POST", "/v1/messages", json={**MESSAGES, "stream": True}) as r:
        text = r.read().decode()
    assert "event: error" in text and "overloaded_error" in text
    assert log_of(gateway, r).status_code == 529  # as it would be before the stream began


# Clients that leave before the answer


def send_and_hang_up(port, key, path, body, provider, wait=0.3):
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {key}\r\nx-smartflow-provider: {provider}\r\n"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        time.sleep(wait)  # the gateway is waiting on the upstream now


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("path,body", [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGES)])
def test_a_client_that_leaves_before_the_answer_cancels_the_upstream_call(gateway, fake_upstream, master_key,
                                                                          provider, path, body):
    from traces.models import VASLog

    fake_upstream.script(provider, delay=30)
    send_and_hang_up(gateway.proxy_port, master_key, path, body, provider)
    hung_up = time.monotonic()
    assert fake_upstream.wait_for_disconnects(1, timeout=3)
    assert time.monotonic() - hung_up < 1  # promptly, not when the answer would have come
    assert fake_upstream.disconnects[0].provider == provider

    def logged():
        gateway.flush_traces()
        return VASLog.objects.first()

    log = wait_for(logged)
    assert log.status_code == 499 and log.error.startswith("cancelled:")
    assert log.provider == provider
