"""OpenAI adapter regressions: the model-family fixes of PROVIDERS.md §5.6."""
from __future__ import annotations

import pytest

from proxy.providers import PROVIDERS
from proxy.providers.base import StreamState

openai = PROVIDERS["openai"]
BASE = "https://api.openai.com/v1"
HELLO = [{"role": "user", "content": "hello"}]


def build(model, **params):
    return openai.build_request({"model": "client-name", "messages": HELLO, **params},
                                model, BASE, "sk-test")


@pytest.mark.parametrize("model", ["gpt-5.4", "o3", "o4-mini"])
def test_it_converts_max_tokens_to_max_completion_tokens_for_reasoning_models(model):
    request = build(model, max_tokens=321)
    assert request.body["max_completion_tokens"] == 321
    assert "max_tokens" not in request.body
    assert "max_tokens->max_completion_tokens" in request.dropped


def test_it_converts_max_completion_tokens_to_max_tokens_for_gpt41():
    request = build("gpt-4.1", max_completion_tokens=123)
    assert request.body["max_tokens"] == 123
    assert "max_completion_tokens" not in request.body
    assert request.dropped == ["max_completion_tokens->max_tokens"]


@pytest.mark.parametrize("model", ["o3", "gpt-5.4"])
def test_it_drops_temperature_for_reasoning_models(model):
    request = build(model, temperature=0.2)
    assert "temperature" not in request.body
    assert "temperature" in request.dropped


def test_it_keeps_the_default_temperature_for_reasoning_models():
    request = build("o3", temperature=1)
    assert request.body["temperature"] == 1
    assert request.dropped == []


def test_it_keeps_temperature_for_gpt4_family():
    request = build("gpt-4o-mini", temperature=0.2, presence_penalty=0.4)
    assert request.body["temperature"] == 0.2
    assert request.body["presence_penalty"] == 0.4


def test_it_drops_stop_for_o3_but_not_o3_mini():
    assert "stop" not in build("o3-2025-04-16", stop="x").body
    assert build("o3-mini", stop="x").body["stop"] == "x"


def test_it_sends_the_upstream_model_and_leaves_the_client_request_alone():
    chat = {"model": "client-name", "messages": HELLO, "max_tokens": 5, "stream": True}
    request = openai.build_request(chat, "gpt-5.4", BASE, "sk-test")
    assert request.body["model"] == "gpt-5.4"
    assert chat == {"model": "client-name", "messages": HELLO, "max_tokens": 5, "stream": True}


def test_it_asks_for_usage_when_streaming_without_recording_it():
    request = build("gpt-4.1", stream=True)
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.dropped == []
    assert "stream_options" not in build("gpt-4.1").body


def test_it_captures_the_usage_chunk_without_emitting_it():
    state = StreamState()
    out = openai.parse_stream_event(
        {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                             "total_tokens": 5}}, state)
    assert out == []
    assert state.usage["total_tokens"] == 5
    assert state.usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_it_emits_a_role_chunk_when_the_upstream_omits_it():
    state = StreamState()
    out = openai.parse_stream_event(
        {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}, state)
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert out[1]["choices"][0]["delta"] == {"content": "Hi"}
