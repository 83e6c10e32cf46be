"""Gemini adapter regressions: PROVIDERS.md §5.4 request details, blocked prompts, RPC errors."""
from __future__ import annotations

import pytest

from proxy.providers import PROVIDERS
from proxy.providers.base import ClientError, StreamState

gemini = PROVIDERS["gemini"]
BASE = "https://generativelanguage.googleapis.com"


def build(messages, model="gemini-2.5-flash", **params):
    return gemini.build_request({"model": "smart", "messages": messages, **params},
                                model, BASE, "AIzaTestKey")


def test_it_keeps_the_system_instruction():
    request = build([{"role": "system", "content": "Answer in French."},
                     {"role": "user", "content": "hi"}])
    assert request.body["systemInstruction"] == {"parts": [{"text": "Answer in French."}]}
    assert request.body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert request.dropped == []


def test_it_looks_up_the_function_response_name():
    body = build([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_w", "content": "18C"}]).body
    assert body["contents"][-1] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"output": "18C"}}}]}


def test_it_rejects_http_image_urls():
    with pytest.raises(ClientError) as info:
        build([{"role": "user", "content": [{"type": "image_url",
                                             "image_url": {"url": "http://x/y.png"}}]}])
    assert "data: URL" in info.value.message


@pytest.mark.parametrize("model,effort,config", [
    ("gemini-2.5-flash", "high", {"thinkingBudget": 24576}),
    ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
    ("gemini-3.1-pro-preview", "none", {"thinkingLevel": "LOW"}),
    ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "MINIMAL"}),
    ("gemini-3.5-flash", "medium", {"thinkingLevel": "MEDIUM"}),
])
def test_it_maps_reasoning_effort_to_thinking_config(model, effort, config):
    body = build([{"role": "user", "content": "hi"}], model=model, reasoning_effort=effort).body
    assert body["generationConfig"]["thinkingConfig"] == config


def test_it_does_not_disable_thinking_on_25_pro():
    request = build([{"role": "user", "content": "hi"}], model="gemini-2.5-pro",
                    reasoning_effort="none")
    assert "generationConfig" not in request.body
    assert request.dropped == ["reasoning_effort"]


def test_it_maps_a_blocked_prompt_to_content_filter_in_a_stream():
    state = StreamState()
    out = gemini.parse_stream_event({"promptFeedback": {"blockReason": "SAFETY"},
                                     "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}},
                                    state)
    assert out[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert state.finished and state.usage["prompt_tokens"] == 4


def test_it_reads_the_retry_delay():
    error = gemini.classify_error(429, {"error": {
        "code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "32s"}]}}, {})
    assert (error.kind, error.retry_after) == ("rate_limited", 32)


def test_it_treats_an_invalid_key_as_an_auth_problem():
    error = gemini.classify_error(400, {"error": {
        "code": 400, "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}}, {})
    assert error.kind == "auth"
