"""Ollama adapter regressions: PROVIDERS.md §5.5 (explicit stream flag, tool names, NDJSON errors)."""
from __future__ import annotations

import pytest

from proxy.providers import PROVIDERS
from proxy.providers.base import StreamState, UpstreamError

ollama = PROVIDERS["ollama"]


def build(messages, **params):
    return ollama.build_request({"model": "local", "messages": messages, **params},
                                "llama3.2", "http://localhost:11434", None)


def test_it_sends_stream_false_explicitly():
    request = build([{"role": "user", "content": "hi"}])
    assert request.body["stream"] is False
    assert build([{"role": "user", "content": "hi"}], stream=True).body["stream"] is True


def test_it_is_an_ndjson_stream():
    assert ollama.stream_format == "ndjson"


def test_it_looks_up_the_tool_name():
    body = build([
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"UTC\"}"}}]},
        {"role": "tool", "tool_call_id": "call_t", "content": "12:00"}]).body
    assert body["messages"][1]["tool_calls"] == [{"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}]
    assert body["messages"][2] == {"role": "tool", "content": "12:00", "tool_name": "get_time",
                                   "tool_call_id": "call_t"}


def test_it_raises_on_an_error_line():
    state = StreamState()
    ollama.parse_stream_event({"message": {"role": "assistant", "content": "a"}, "done": False}, state)
    with pytest.raises(UpstreamError) as info:
        ollama.parse_stream_event({"error": "model runner crashed"}, state)
    assert info.value.message == "ollama: model runner crashed"


def test_a_stream_that_ends_without_done_is_cut_not_stopped():
    state = StreamState()
    ollama.parse_stream_event({"message": {"role": "assistant", "content": "a"}, "done": False}, state)
    with pytest.raises(UpstreamError) as info:
        ollama.finish_stream(state)
    assert info.value.kind == "bad_response"
    assert info.value.message == 'ollama: the answer was cut off: the stream ended before "done": true.'
    assert not state.finished
