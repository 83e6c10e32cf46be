"""Tests for the fake upstream: formats, contract checks, streaming and scripting."""

from __future__ import annotations

import json
import socket
import time

import anthropic
import httpx
import openai
import pydantic
import pytest

from tests.fake_upstream import (
    ANTHROPIC_TOOL_PREAMBLE,
    COMPLETION_TOKENS,
    PROMPT_TOKENS,
    TOOL_ARGUMENTS,
    TOTAL_TOKENS,
    anthropic_error,
    gemini_error,
    openai_error,
)

OPENAI_HEADERS = {"Authorization": "Bearer sk-upstream"}
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-upstream", "anthropic-version": "2023-06-01"}
GEMINI_HEADERS = {"x-goog-api-key": "AIza-upstream"}
WEATHER_TOOL_OPENAI = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
WEATHER_TOOL_ANTHROPIC = {"name": "get_weather", "input_schema": {"type": "object"}}
WEATHER_TOOL_GEMINI = {"functionDeclarations": [{"name": "get_weather"}]}


@pytest.fixture
def fake(fake_upstream):
    """The suite's fake server (root conftest), reset around each test."""
    return fake_upstream


def call(fake, provider, body, headers=None, model="gemini-2.5-flash", stream=False, **kwargs):
    """POST a request to one of the fake providers and return the httpx response."""
    if provider == "openai":
        url, default_headers = "/v1/chat/completions", OPENAI_HEADERS
    elif provider == "anthropic":
        url, default_headers = "/v1/messages", ANTHROPIC_HEADERS
    elif provider == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url, default_headers = f"/v1beta/models/{model}:{method}", GEMINI_HEADERS
    else:
        url, default_headers = "/api/chat", {}
    return httpx.post(fake.url + url, json=body, headers=default_headers if headers is None else headers,
                      timeout=kwargs.pop("timeout", 5), **kwargs)


def raw_chunks(fake, path, body, headers):
    """Stream a request and return the raw byte chunks as they arrived."""
    with httpx.stream("POST", fake.url + path, json=body, headers=headers, timeout=5) as response:
        assert response.status_code == 200, response.read()
        return response.headers, list(response.iter_raw())


def sse_data(chunks):
    """The payloads of the `data:` lines in an SSE transcript."""
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


def openai_body(content="hi", **extra):
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": content}], **extra}


def anthropic_body(messages=None, **extra):
    return {"model": "claude-sonnet-4-6", "max_tokens": 100,
            "messages": messages or [{"role": "user", "content": "hi"}], **extra}


def gemini_body(text="hi", **extra):
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


def ollama_body(content="hi", stream=False, **extra):
    return {"model": "llama3.2", "messages": [{"role": "user", "content": content}], "stream": stream, **extra}


# OpenAI


def test_it_answers_openai_in_the_sdk_format(fake):
    response = call(fake, "openai", openai_body("hello there"))
    completion = openai.types.chat.ChatCompletion.model_validate(response.json())
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4.1"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert completion.usage.total_tokens == TOTAL_TOKENS


def test_it_streams_openai_as_separate_sse_events_with_usage(fake):
    body = openai_body("hello there", stream=True, stream_options={"include_usage": True})
    headers, chunks = raw_chunks(fake, "/v1/chat/completions", body, OPENAI_HEADERS)
    assert headers["content-type"].startswith("text/event-stream")
    assert len(chunks) >= 5  # each event flushed on its own
    payloads = sse_data(chunks)
    assert payloads[-1] == "[DONE]"
    parsed = [openai.types.chat.ChatCompletionChunk.model_validate_json(p) for p in payloads[:-1]]
    assert parsed[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    assert text == "echo: hello there"
    assert len([c for c in parsed if c.choices and c.choices[0].delta.content]) >= 3
    assert parsed[-1].choices == [] and parsed[-1].usage.total_tokens == TOTAL_TOKENS
    assert len({c.id for c in parsed}) == 1


def test_it_streams_openai_without_usage_chunk_unless_asked(fake):
    _, chunks = raw_chunks(fake, "/v1/chat/completions", openai_body(stream=True), OPENAI_HEADERS)
    payloads = [json.loads(p) for p in sse_data(chunks)[:-1]]
    assert all(p["choices"] for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_it_calls_the_openai_tool_when_asked_about_weather(fake):
    body = openai_body("What's the weather in Paris?", tools=[WEATHER_TOOL_OPENAI])
    completion = openai.types.chat.ChatCompletion.model_validate(call(fake, "openai", body).json())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == TOOL_ARGUMENTS


def test_it_streams_openai_tool_arguments_in_fragments(fake):
    body = openai_body("weather?", tools=[WEATHER_TOOL_OPENAI], stream=True)
    _, chunks = raw_chunks(fake, "/v1/chat/completions", body, OPENAI_HEADERS)
    deltas = [json.loads(p)["choices"][0]["delta"] for p in sse_data(chunks)[:-1]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"]
    fragments = [c["function"]["arguments"] for c in calls[1:]]
    assert len(fragments) >= 3
    assert json.loads("".join(fragments)) == TOOL_ARGUMENTS


def test_it_echoes_the_openai_tool_result(fake):
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    response = call(fake, "openai", {"model": "gpt-4.1", "messages": messages, "tools": [WEATHER_TOOL_OPENAI]})
    assert response.json()["choices"][0]["message"]["content"] == "echo: 18C"


@pytest.mark.parametrize("body, headers, status, message", [
    (openai_body(model="gpt-5.4", max_tokens=10), None, 400,
     "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."),
    (openai_body(model="o3", temperature=0.2), None, 400,
     "Unsupported value: 'temperature' does not support 0.2 with this model. Only the default (1) value is supported."),
    (openai_body(stream_options={"include_usage": True}), None, 400, "'stream_options'"),
    (openai_body(), {}, 401, "You didn't provide an API key"),
    ({"model": "gpt-4.1", "messages": []}, None, 400, "empty array"),
    ({"messages": [{"role": "user", "content": "hi"}]}, None, 400, "model"),
    ({"model": "gpt-4.1", "messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}]}, None, 400,
     "must be a response to a preceeding message with 'tool_calls'"),
])
def test_it_refuses_openai_contract_violations(fake, body, headers, status, message):
    response = call(fake, "openai", body, headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("provider, body", [
    ("openai", {"model": "gpt-4.1", "messages": ["hi"]}),
    ("anthropic", anthropic_body(["hi"])),
    ("gemini", {"contents": "hi"}),
    ("ollama", {"model": "llama3.2", "messages": [None], "stream": False}),
])
def test_it_refuses_malformed_bodies_in_the_provider_format(fake, provider, body):
    response = call(fake, provider, body)
    assert response.status_code == 400
    assert "error" in response.json()


def test_it_names_the_param_and_code_of_openai_refusals(fake):
    error = call(fake, "openai", openai_body(model="gpt-5.4", max_tokens=10)).json()["error"]
    assert (error["param"], error["code"]) == ("max_tokens", "unsupported_parameter")


@pytest.mark.parametrize("body", [
    openai_body(model="gpt-5.4", max_completion_tokens=10, temperature=1),
    openai_body(model="gpt-5.4", temperature=0.2, reasoning_effort="none"),
    openai_body(model="gpt-5-chat-latest", temperature=0.2),
    openai_body(model="gpt-4.1", max_tokens=10, temperature=0.2),
])
def test_it_accepts_what_openai_accepts(fake, body):
    assert call(fake, "openai", body).status_code == 200


# Anthropic


def test_it_answers_anthropic_in_the_sdk_format(fake):
    message = anthropic.types.Message.model_validate(call(fake, "anthropic", anthropic_body()).json())
    assert message.content[0].text == "echo: hi"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_it_accepts_bearer_auth_for_anthropic(fake):
    headers = {"Authorization": "Bearer sk-ant", "anthropic-version": "2023-06-01"}
    assert call(fake, "anthropic", anthropic_body(), headers=headers).status_code == 200


def test_it_calls_the_anthropic_tool_after_a_preamble(fake):
    body = anthropic_body([{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL_ANTHROPIC])
    message = anthropic.types.Message.model_validate(call(fake, "anthropic", body).json())
    assert message.stop_reason == "tool_use"
    assert message.content[0].text == ANTHROPIC_TOOL_PREAMBLE
    assert (message.content[1].name, message.content[1].input) == ("get_weather", TOOL_ARGUMENTS)


def test_it_streams_anthropic_named_events_in_order(fake):
    body = anthropic_body([{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL_ANTHROPIC], stream=True)
    headers, chunks = raw_chunks(fake, "/v1/messages", body, ANTHROPIC_HEADERS)
    assert headers["content-type"].startswith("text/event-stream")
    assert len(chunks) >= 10
    adapter = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
    text = b"".join(chunks).decode()
    names = [line[len("event: "):] for line in text.split("\n") if line.startswith("event: ")]
    events = [json.loads(p) for p in sse_data(chunks)]
    assert [e["type"] for e in events] == names
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    for event in events:
        if event["type"] != "ping":
            adapter.validate_python(event)
    fragments = [e["delta"]["partial_json"] for e in events
                 if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"]
    assert len([f for f in fragments if f]) >= 3
    assert json.loads("".join(fragments)) == TOOL_ARGUMENTS
    assert events[-2]["usage"]["output_tokens"] == COMPLETION_TOKENS
    assert "[DONE]" not in text


def test_it_echoes_the_anthropic_tool_result(fake):
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                                     {"type": "text", "text": "thanks"}]},
    ]
    body = anthropic_body(messages, tools=[WEATHER_TOOL_ANTHROPIC])
    assert call(fake, "anthropic", body).json()["content"][0]["text"] == "echo: 18C"


TOOL_USE = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "roles must alternate"),
    ([{"role": "assistant", "content": "a"}], 'first message must use the "user" role'),
    ([{"role": "system", "content": "a"}, {"role": "user", "content": "b"}], 'Unexpected role "system"'),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "text content blocks must be non-empty"),
    ([{"role": "user", "content": ""}], "must have non-empty content"),
    ([{"role": "user", "content": "a"}, TOOL_USE, {"role": "user", "content": "b"}],
     "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1"),
    ([{"role": "user", "content": "a"}, TOOL_USE,
      {"role": "user", "content": [{"type": "text", "text": "b"},
                                   {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}],
     "Did not find 1 `tool_result` block(s) at the beginning of this message"),
    ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}],
     "unexpected `tool_use_id`"),
])
def test_it_refuses_anthropic_message_violations(fake, messages, message):
    response = call(fake, "anthropic", anthropic_body(messages))
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"]


@pytest.mark.parametrize("body, headers, status, message", [
    ({"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}]}, None, 400,
     "max_tokens: Field required"),
    (anthropic_body(max_tokens="100"), None, 400, "max_tokens: Input should be a valid integer"),
    (anthropic_body(), {"x-api-key": "k"}, 400, "anthropic-version: header is required"),
    (anthropic_body(), {"anthropic-version": "2023-06-01"}, 401, "x-api-key header is required"),
])
def test_it_refuses_anthropic_request_violations(fake, body, headers, status, message):
    response = call(fake, "anthropic", body, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


# Gemini


def test_it_answers_gemini_generate_content(fake):
    response = call(fake, "gemini", gemini_body("hello"))
    assert response.status_code == 200
    body = response.json()
    candidate = body["candidates"][0]
    assert candidate["content"] == {"role": "model", "parts": [{"text": "echo: hello"}]}
    assert candidate["finishReason"] == "STOP"
    assert body["modelVersion"] == "gemini-2.5-flash"
    usage = body["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"], usage["totalTokenCount"]) == (
        PROMPT_TOKENS, COMPLETION_TOKENS, TOTAL_TOKENS)


def test_it_streams_gemini_sse_without_done(fake):
    headers, chunks = raw_chunks(fake, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                                 gemini_body("hello"), GEMINI_HEADERS)
    assert headers["content-type"].startswith("text/event-stream")
    assert len(chunks) >= 3
    assert b"\r\n\r\n" in chunks[0]
    payloads = sse_data(chunks)
    assert "[DONE]" not in payloads
    events = [json.loads(p) for p in payloads]
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
    assert text == "echo: hello"
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["totalTokenCount"] == TOTAL_TOKENS


def test_it_calls_the_gemini_function_whole(fake):
    body = gemini_body("weather?", tools=[WEATHER_TOOL_GEMINI])
    _, chunks = raw_chunks(fake, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                           body, GEMINI_HEADERS)
    events = [json.loads(p) for p in sse_data(chunks)]
    part = events[0]["candidates"][0]["content"]["parts"][0]
    assert part["functionCall"] == {"name": "get_weather", "args": TOOL_ARGUMENTS}
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"


@pytest.mark.parametrize("body, headers, status, message", [
    (gemini_body(), {}, 403, "unregistered callers"),
    ({"contents": []}, None, 400, "contents is not specified"),
    ({"contents": [{"role": "assistant", "parts": [{"text": "a"}]}]}, None, 400, "valid role: user, model"),
])
def test_it_refuses_gemini_violations(fake, body, headers, status, message):
    response = call(fake, "gemini", body, headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and message in error["message"]
    assert error["status"] in ("INVALID_ARGUMENT", "PERMISSION_DENIED")


# Ollama


def test_it_answers_ollama_in_one_object(fake):
    body = call(fake, "ollama", ollama_body("hello")).json()
    assert body["message"] == {"role": "assistant", "content": "echo: hello"}
    assert body["done"] is True and body["done_reason"] == "stop"
    assert (body["prompt_eval_count"], body["eval_count"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_it_streams_ollama_ndjson(fake):
    headers, chunks = raw_chunks(fake, "/api/chat", ollama_body("hello", stream=True), {})
    assert headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in b"".join(chunks).splitlines()]
    assert len(chunks) == len(lines) >= 4
    assert "".join(line["message"]["content"] for line in lines) == "echo: hello"
    assert [line["done"] for line in lines][-2:] == [False, True]


def test_it_calls_the_ollama_tool_whole(fake):
    body = ollama_body("weather?", tools=[WEATHER_TOOL_OPENAI])
    message = call(fake, "ollama", body).json()["message"]
    assert message["tool_calls"] == [{"function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}]


def test_it_requires_ollama_stream_explicitly(fake):
    body = ollama_body()
    del body["stream"]
    response = call(fake, "ollama", body)
    assert response.status_code == 400
    assert "stream" in response.json()["error"]


# Scripting


def test_it_serves_a_scripted_error_once(fake):
    fake.script("openai", status=429, headers={"retry-after": "2"},
                body=openai_error(429, "Rate limit reached", code="rate_limit_exceeded"))
    first = call(fake, "openai", openai_body())
    assert first.status_code == 429 and first.headers["retry-after"] == "2"
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    assert call(fake, "openai", openai_body()).status_code == 200


def test_it_builds_default_error_bodies_from_the_status(fake):
    fake.script("anthropic", status=529)
    response = call(fake, "anthropic", anthropic_body())
    assert response.status_code == 529
    assert response.json() == anthropic_error("overloaded_error", "Overloaded")


def test_it_only_applies_a_script_to_its_provider(fake):
    fake.script("gemini", status=429, body=gemini_error(429, message="Quota", retry_delay=32))
    assert call(fake, "openai", openai_body()).status_code == 200
    response = call(fake, "gemini", gemini_body())
    assert response.status_code == 429
    assert response.json()["error"]["details"][0]["retryDelay"] == "32s"


def test_it_repeats_a_script_the_given_number_of_times(fake):
    fake.script(status=500, times=2)
    statuses = [call(fake, "ollama", ollama_body()).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]


def test_it_does_not_spend_a_script_on_an_invalid_request(fake):
    fake.script("openai", status=500)
    assert call(fake, "openai", openai_body(), headers={}).status_code == 401
    assert call(fake, "openai", openai_body()).status_code == 500


def test_it_serves_a_raw_scripted_body(fake):
    fake.script(status=502, body="<html>Bad gateway</html>")
    response = call(fake, "anthropic", anthropic_body())
    assert response.status_code == 502 and response.text == "<html>Bad gateway</html>"


def test_it_delays_a_scripted_answer(fake):
    fake.script(delay=0.3)
    started = time.monotonic()
    assert call(fake, "openai", openai_body()).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_it_hangs_until_the_client_gives_up(fake):
    fake.script(hang=True)
    with pytest.raises(httpx.ReadTimeout):
        call(fake, "anthropic", anthropic_body(), timeout=0.2)
    assert fake.wait_for_disconnects(1)
    assert fake.disconnects[0].provider == "anthropic" and fake.disconnects[0].events_sent == 0


def test_it_drops_the_connection_mid_stream(fake):
    fake.script(fail_mid_stream=True)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", fake.url + "/v1/chat/completions", json=openai_body(stream=True),
                          headers=OPENAI_HEADERS) as response:
            for line in response.iter_lines():
                received.append(line)
    data = [json.loads(line[len("data: "):]) for line in received if line.startswith("data: ")]
    assert len(data) == 3  # the role chunk and two of the three content deltas
    assert "".join(d["choices"][0]["delta"]["content"] for d in data) == "echo: "


def test_it_cuts_a_non_streaming_body_when_scripted(fake):
    fake.script(fail_mid_stream=True)
    with pytest.raises(httpx.RemoteProtocolError):
        call(fake, "gemini", gemini_body())


def test_it_resets_the_connection_mid_stream_when_asked(fake):
    fake.script(fail_mid_stream=2, reset=True)
    received = []
    with pytest.raises(httpx.ReadError):  # a reset, not the clean close above
        with httpx.stream("POST", fake.url + "/v1/chat/completions", json=openai_body(stream=True),
                          headers=OPENAI_HEADERS) as response:
            for line in response.iter_lines():
                received.append(line)
    assert any(line.startswith("data: ") for line in received)  # what came before the reset


def test_it_stalls_mid_stream_until_the_client_gives_up(fake):
    fake.script(stall_mid_stream=2)
    received = []
    with pytest.raises(httpx.ReadTimeout):
        with httpx.stream("POST", fake.url + "/api/chat", json=ollama_body(stream=True), timeout=0.5) as response:
            for line in response.iter_lines():
                received.append(line)
    assert len(received) == 2 and not json.loads(received[-1])["done"]
    assert fake.wait_for_disconnects(1)
    assert fake.disconnects[0].events_sent == 2


def raw_post(fake, path, body, headers):
    """Sends one request on a raw socket; returns what came back before the connection ended."""
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((fake.host, fake.port)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{head}"
                     f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        sock.settimeout(5)
        return sock.recv(65536)


@pytest.mark.parametrize("reset", [False, True])
def test_it_drops_a_request_unread_and_unanswered(fake, reset):
    fake.script("anthropic", drop=True, reset=reset)
    if reset:
        with pytest.raises(ConnectionResetError):
            raw_post(fake, "/v1/messages", anthropic_body(), ANTHROPIC_HEADERS)
    else:
        assert raw_post(fake, "/v1/messages", anthropic_body(), ANTHROPIC_HEADERS) == b""  # closed, no answer
    assert fake.dropped == ["anthropic"] and fake.requests == []
    assert call(fake, "anthropic", anthropic_body()).status_code == 200  # once only
    assert fake.dropped == ["anthropic"] and len(fake.requests) == 1


def test_a_drop_script_waits_for_its_turn(fake):
    fake.script("openai", status=500)
    fake.script("openai", drop=True)
    assert call(fake, "openai", openai_body()).status_code == 500
    with pytest.raises(httpx.RemoteProtocolError):
        call(fake, "openai", openai_body())
    assert fake.dropped == ["openai"]


def test_it_streams_scripted_events(fake):
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    fake.script("anthropic", stream_events=[{"type": "message_start", "message": {}}, ": keep-alive\n\n", error])
    _, chunks = raw_chunks(fake, "/v1/messages", anthropic_body(stream=True), ANTHROPIC_HEADERS)
    assert chunks[1] == b": keep-alive\n\n"
    assert chunks[2].startswith(b"event: error\ndata: ")


def test_it_records_a_client_leaving_mid_stream(fake):
    fake.script(event_delay=0.2)
    with httpx.stream("POST", fake.url + "/api/chat", json=ollama_body(stream=True), timeout=5) as response:
        next(response.iter_raw())
    assert fake.wait_for_disconnects(1)
    assert fake.disconnects[0].provider == "ollama"
    assert 1 <= fake.disconnects[0].events_sent < 4


# Recording


def test_it_records_what_the_upstream_received(fake):
    call(fake, "gemini", gemini_body(), headers={"X-Goog-Api-Key": "AIza-1"})
    call(fake, "openai", openai_body(model="gpt-5.4", max_tokens=1))
    gemini, openai_request = fake.requests
    assert gemini.provider == "gemini" and gemini.headers["x-goog-api-key"] == "AIza-1"
    assert gemini.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert gemini.json == gemini_body()
    assert openai_request.json["max_tokens"] == 1  # refused requests are recorded too
    assert fake.requests_for("openai") == [openai_request] and fake.last_request is openai_request


def test_it_records_the_query_and_unknown_paths(fake):
    call(fake, "gemini", gemini_body(), stream=True)
    response = httpx.post(fake.url + "/v1/v1/chat/completions", json={})
    assert response.status_code == 404
    assert fake.requests[0].query == {"alt": "sse"}
    assert (fake.requests[1].provider, fake.requests[1].path) == ("unknown", "/v1/v1/chat/completions")


def test_it_forgets_everything_on_reset(fake):
    fake.script(status=500)
    call(fake, "openai", openai_body(), headers={})
    fake.script(drop=True)
    fake.reset()
    assert fake.requests == [] and fake.disconnects == [] and fake.dropped == []
    assert call(fake, "openai", openai_body()).status_code == 200


def test_it_exposes_base_urls_per_provider(fake):
    assert fake.base_urls["openai"] == fake.url + "/v1"
    assert fake.base_urls["anthropic"] == fake.url
