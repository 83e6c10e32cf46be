"""Streaming through the gateway, every provider, over real sockets."""
import json
import socket

import openai
import pytest

from tests.fake_upstream import COMPLETION_TOKENS, ECHO_PREFIX, PROMPT_TOKENS, TOOL_ARGUMENTS, anthropic_error

CHAT = {"model": "gpt-4.1", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "stream this please"}]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
PROVIDERS = ["openai", "anthropic", "gemini", "ollama"]


@pytest.fixture
def sdk(gateway, master_key):
    return openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=master_key, max_retries=0)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("include_usage", [True, False])
def test_it_streams_text_from_every_provider(gateway, sdk, fake_upstream, provider, include_usage):
    stream = sdk.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": include_usage},
                                         extra_headers={"x-smartflow-provider": provider})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"gpt-4.1"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ECHO_PREFIX + "stream this please"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # not buffered into one
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = [c.usage for c in chunks if c.usage]
    if include_usage:
        assert chunks[-1].choices == [] and (usage[-1].prompt_tokens, usage[-1].completion_tokens) == (
            PROMPT_TOKENS, COMPLETION_TOKENS)
    else:
        assert usage == []
    log = gateway.log(stream.response.headers["x-smartflow-request-id"])
    assert log.stream and log.status_code == 200
    assert (log.tokens_input, log.tokens_output) == (PROMPT_TOKENS, COMPLETION_TOKENS)  # usage kept even if not asked
    assert log.response["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_tool_calls_arrive_whole_with_the_right_finish_reason(gateway, sdk, fake_upstream, provider):
    messages = [{"role": "user", "content": "what's the weather in Paris?"}]
    stream = sdk.chat.completions.create(model="gpt-4.1", messages=messages, tools=TOOLS, stream=True,
                                         extra_headers={"x-smartflow-provider": provider})
    calls, finish = {}, None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                slot = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = call.id or slot["id"]
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "get_weather" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == TOOL_ARGUMENTS
    # The follow-up turn with the tool result works with the same id.
    follow = sdk.chat.completions.create(model="gpt-4.1", tools=TOOLS, messages=messages + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0]["id"], "type": "function",
             "function": {"name": "get_weather", "arguments": calls[0]["arguments"]}}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C"}],
        extra_headers={"x-smartflow-provider": provider})
    assert follow.choices[0].message.content == ECHO_PREFIX + "18C"


def test_an_upstream_failing_mid_stream_ends_with_an_error_event(gateway, sdk, fake_upstream):
    fake_upstream.script(provider="anthropic", stream_events=[
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                              "model": "claude-sonnet-4-6", "content": [], "stop_reason": None,
                                              "usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "partial"}},
        {"type": "error", "error": anthropic_error("overloaded_error", "Overloaded")["error"]},
    ])
    stream = sdk.chat.completions.create(**CHAT, stream=True, extra_headers={"x-smartflow-provider": "anthropic"})
    seen = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            seen.extend(c.delta.content or "" for c in chunk.choices)
    assert "partial" in "".join(seen) and "Overloaded" in str(err.value)
    log = gateway.log(stream.response.headers["x-smartflow-request-id"])
    assert log.status_code == 502 and "Overloaded" in log.error


def test_a_cut_upstream_stream_is_not_a_silent_success(gateway, sdk, fake_upstream):
    fake_upstream.script(provider="anthropic", fail_mid_stream=3)
    stream = sdk.chat.completions.create(**CHAT, stream=True, extra_headers={"x-smartflow-provider": "anthropic"})
    with pytest.raises(openai.APIError):
        list(stream)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "ollama"])
def test_a_client_that_disconnects_cancels_the_upstream_and_is_logged(gateway, fake_upstream, master_key, provider):
    fake_upstream.script(provider=provider, event_delay=0.3)
    body = json.dumps({**CHAT, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gateway.proxy_port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + master_key.encode() + b"\r\nx-smartflow-provider: " +
                     provider.encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        sock.settimeout(10)
        head = b""
        while b"echo" not in head:  # the first text delta has arrived; then hang up
            data = sock.recv(4096)
            assert data and not head.startswith(b"HTTP/1.1 5"), head
            head += data
    assert head.startswith(b"HTTP/1.1 200"), head
    request_id = [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                  if line.lower().startswith(b"x-smartflow-request-id")][0]
    assert fake_upstream.wait_for_disconnects(1, timeout=5)
    log = gateway.log(request_id)
    assert log.status_code == 499 and log.error.startswith("cancelled")
    assert log.stream and log.response["choices"][0]["message"]["content"]  # what was streamed so far
    assert log.tokens_output >= 1  # the tokens seen so far (estimated when the upstream had not totalled them)
