"""Behaviour all four adapters share: registry, tool-call turns, streamed pieces, key redaction."""
from __future__ import annotations

import json
import re

import pytest

from proxy.providers import PROVIDERS, convert
from proxy.providers.base import StreamState

CALL_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")

# One upstream answer with two tool calls (Paris weather, then time), per provider.
TWO_CALLS = {
    "openai": {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}},
    "anthropic": {"type": "message", "role": "assistant", "stop_reason": "tool_use", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}],
        "usage": {"input_tokens": 5, "output_tokens": 5}},
    "gemini": {"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
        {"functionCall": {"name": "get_time", "args": {}}}]}}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 5, "totalTokenCount": 10}},
    "ollama": {"message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_time", "arguments": {}}}]},
        "done": True, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 5},
}

# The same two calls as stream events; OpenAI and Anthropic split the arguments in pieces.
TWO_CALLS_STREAM = {
    "openai": [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                            "function": {"name": "get_weather", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ty\": \"Par"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "is\"}"}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                                                            "function": {"name": "get_time", "arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}],
    "anthropic": [
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ty\": \"Par"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "is\"}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}},
        {"type": "message_stop"}],
    "gemini": [
        {"candidates": [{"index": 0, "content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}}]},
        {"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_time", "args": {}}}]}}],
         "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 5, "totalTokenCount": 10}}],
    "ollama": [
        {"message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {}}}]}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
         "prompt_eval_count": 5, "eval_count": 5}],
}
EXPECTED_CALLS = [("get_weather", {"city": "Paris"}), ("get_time", {})]


def replay(provider, events):
    adapter, state, chunks = PROVIDERS[provider], StreamState(), []
    for event in events:
        chunks.extend(adapter.parse_stream_event(event, state))
    chunks.extend(adapter.finish_stream(state))
    calls, finishes, deltas_per_call = {}, [], {}
    for body in chunks:
        choice = body["choices"][0]
        for call in choice["delta"].get("tool_calls") or []:
            entry = calls.setdefault(call["index"], {"id": call.get("id"), "name": None, "arguments": ""})
            entry["name"] = entry["name"] or call["function"].get("name")
            entry["arguments"] += call["function"].get("arguments", "")
            deltas_per_call[call["index"]] = deltas_per_call.get(call["index"], 0) + 1
        if choice["finish_reason"]:
            finishes.append(choice["finish_reason"])
    return [calls[i] for i in sorted(calls)], finishes, deltas_per_call, state


def test_it_registers_exactly_the_four_providers():
    assert sorted(PROVIDERS) == ["anthropic", "gemini", "ollama", "openai"]
    assert all(adapter.name == key for key, adapter in PROVIDERS.items())


@pytest.mark.parametrize("provider", sorted(TWO_CALLS))
def test_it_finishes_with_tool_calls_after_a_tool_call(provider):
    response = PROVIDERS[provider].parse_response(TWO_CALLS[provider])
    assert response["choices"][0]["finish_reason"] == "tool_calls"
    _, finishes, _, state = replay(provider, TWO_CALLS_STREAM[provider])
    assert finishes == ["tool_calls"]
    assert state.finish_reason == "tool_calls" and state.finished


@pytest.mark.parametrize("provider", sorted(TWO_CALLS))
def test_it_returns_several_tool_calls_in_one_turn(provider):
    message = PROVIDERS[provider].parse_response(TWO_CALLS[provider])["choices"][0]["message"]
    assert message["content"] is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in message["tool_calls"]] == EXPECTED_CALLS
    ids = [c["id"] for c in message["tool_calls"]]
    assert len(set(ids)) == 2 and all(c["type"] == "function" for c in message["tool_calls"])


@pytest.mark.parametrize("provider", sorted(TWO_CALLS_STREAM))
def test_it_assembles_streamed_tool_arguments_arriving_in_pieces(provider):
    calls, _, deltas, state = replay(provider, TWO_CALLS_STREAM[provider])
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == EXPECTED_CALLS
    assert all(c["id"] for c in calls)
    if provider in ("gemini", "ollama"):
        assert deltas == {0: 1, 1: 1}  # whole calls: one delta each (§6.3)
    else:
        assert deltas[0] == 4  # start + three non-empty fragments; empty ones skipped
    assert state.usage["total_tokens"] == 10


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_it_strips_a_trailing_slash_and_omits_auth_without_a_key(provider):
    base = {"openai": "https://api.openai.com/v1/", "anthropic": "https://api.anthropic.com/",
            "gemini": "https://generativelanguage.googleapis.com/", "ollama": "http://localhost:11434/"}[provider]
    request = PROVIDERS[provider].build_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "gemini-2.5-flash"
        if provider == "gemini" else "some-model", base, None)
    assert "//" not in request.url.split("://", 1)[1]
    lowered = {k.lower() for k in request.headers}
    assert lowered & {"authorization", "x-api-key", "x-goog-api-key"} == set()
    assert request.headers["content-type"] == "application/json"


@pytest.mark.parametrize("provider,body", [
    ("openai", {"error": {"message": "Incorrect API key provided: sk-proj-abcdef1234567890", "code": "invalid_api_key"}}),
    ("anthropic", {"type": "error", "error": {"type": "authentication_error", "message": "bad key sk-ant-api03-XYZ123456789"}}),
    ("gemini", {"error": {"code": 400, "message": "key AIzaSyA1234567890abcdefghij is invalid", "status": "INVALID_ARGUMENT"}}),
    ("ollama", "unauthorized: Bearer abcdef0123456789"),
])
def test_it_never_puts_an_api_key_in_the_error_message(provider, body):
    error = PROVIDERS[provider].classify_error(401, body, {})
    assert error.message.startswith(f"{provider}: ")
    assert not re.search(r"sk-|AIza|abcdef0123", error.message), error.message


def test_it_generates_openai_style_tool_call_ids():
    ids = {convert.new_tool_call_id() for _ in range(50)}
    assert len(ids) == 50 and all(CALL_ID.match(i) for i in ids)


def test_it_parses_data_urls():
    assert convert.parse_data_url("data:image/PNG;base64,AAA=") == ("image/png", "AAA=")
    assert convert.parse_data_url("data:application/pdf;name=a.pdf;base64,JVB") == ("application/pdf", "JVB")
    assert convert.parse_data_url("https://x/y.png") is None
    assert convert.parse_data_url("data:text/plain,hello") is None


@pytest.mark.parametrize("arguments,expected", [
    ("{\"a\": 1}", {"a": 1}), ("", {}), (None, {}), ("{\"a\": ", {}), ("[1, 2]", {}), ({"b": 2}, {"b": 2})])
def test_it_falls_back_to_an_empty_object_for_bad_arguments(arguments, expected):
    assert convert.parse_arguments(arguments) == expected


@pytest.mark.parametrize("provider,model,expected", [
    ("anthropic", "claude-sonnet-4-6", {"tool_choice": {"type": "any"}}),
    ("gemini", "gemini-2.5-flash", {"toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}),
])
def test_it_resolves_allowed_tools_into_a_filtered_tool_list(provider, model, expected):
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b", "c")]
    choice = {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "b"}}]}}
    body = PROVIDERS[provider].build_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools,
         "tool_choice": choice}, model, "http://upstream", None).body
    names = [t["name"] for t in body["tools"]] if provider == "anthropic" else \
        [d["name"] for d in body["tools"][0]["functionDeclarations"]]
    assert names == ["b"]
    assert {k: body[k] for k in expected} == expected
