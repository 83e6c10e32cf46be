"""Anthropic adapter regressions: turn structure and parameters of PROVIDERS.md §5.1, stream end of §5.3."""
from __future__ import annotations

import pytest

from proxy.providers import PROVIDERS
from proxy.providers.base import ClientError, StreamState, UpstreamError

anthropic = PROVIDERS["anthropic"]


def build(messages, model="claude-sonnet-4-6", **params):
    return anthropic.build_request({"model": "smart", "messages": messages, **params},
                                   model, "https://api.anthropic.com", "sk-ant-test")


def test_it_hoists_system_and_developer_messages():
    body = build([{"role": "system", "content": "One."}, {"role": "user", "content": "hi"},
                  {"role": "developer", "content": [{"type": "text", "text": "Two."}]}]).body
    assert body["system"] == "One.\n\nTwo."
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_it_merges_consecutive_user_turns():
    body = build([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]).body
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                             {"type": "text", "text": "b"}]}]


def test_it_prepends_a_user_turn_before_a_leading_assistant_turn():
    body = build([{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "hi"}]).body
    assert body["messages"][0] == {"role": "user", "content": [{"type": "text", "text": "."}]}
    assert body["messages"][1]["role"] == "assistant"


def test_it_puts_tool_results_first_in_the_user_turn():
    body = build([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "user", "content": "(also, be quick)"},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]).body
    last = body["messages"][-1]
    assert [b["type"] for b in last["content"]] == ["tool_result", "text"]
    assert last["content"][0] == {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}


def test_it_defaults_max_tokens_to_4096():
    assert build([{"role": "user", "content": "hi"}]).body["max_tokens"] == 4096


def test_it_sends_a_stop_string_as_a_list():
    assert build([{"role": "user", "content": "hi"}], stop="END").body["stop_sequences"] == ["END"]


def test_it_rejects_more_than_one_choice():
    with pytest.raises(ClientError) as info:
        build([{"role": "user", "content": "hi"}], n=2)
    assert (info.value.status, info.value.param) == (400, "n")


def test_it_rejects_audio_input():
    with pytest.raises(ClientError):
        build([{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}])


def test_it_rejects_an_empty_user_turn():
    with pytest.raises(ClientError):
        build([{"role": "user", "content": ""}])


def test_it_makes_tool_ids_acceptable_to_anthropic():
    body = build([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call.1:x", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call.1:x", "content": "ok"}]).body
    assert body["messages"][1]["content"][0]["id"] == "call_1_x"
    assert body["messages"][2]["content"][0]["tool_use_id"] == "call_1_x"


def test_it_sends_user_as_metadata_and_drops_openai_only_knobs():
    request = build([{"role": "user", "content": "hi"}], user="u-9", seed=3, store=True,
                    verbosity="low")
    assert request.body["metadata"] == {"user_id": "u-9"}
    assert request.dropped == ["seed", "store", "verbosity"]


def test_it_fails_a_stream_cut_before_the_stop_reason():
    state = StreamState()
    anthropic.parse_stream_event({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}, state)
    anthropic.parse_stream_event({"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": "Hal"}}, state)
    with pytest.raises(UpstreamError) as info:
        anthropic.finish_stream(state)
    assert info.value.kind == "bad_response" and "cut off" in info.value.message


def test_it_maps_529_to_overloaded():
    error = anthropic.classify_error(529, {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}, {})
    assert (error.kind, error.upstream_code) == ("overloaded", "overloaded_error")


TOOL_LOOP = [{"role": "user", "content": "weather?"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]
TOOLS = [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]


def test_thinking_stays_off_in_a_tool_loop_it_could_not_replay():
    """Anthropic wants the earlier thinking blocks back in a tool loop; the OpenAI form has none (§6.9)."""
    request = build(TOOL_LOOP, model="claude-sonnet-4-6", reasoning_effort="high", tools=TOOLS)
    assert "thinking" not in request.body
    assert any(d.startswith("reasoning_effort") for d in request.dropped)


def test_thinking_stays_off_with_a_forced_tool_choice():
    request = build([{"role": "user", "content": "x"}], reasoning_effort="high", tools=TOOLS, tool_choice="required")
    assert "thinking" not in request.body and request.body["tool_choice"] == {"type": "any"}


def test_thinking_is_on_for_a_plain_turn():
    assert build([{"role": "user", "content": "x"}], reasoning_effort="high").body["thinking"]["type"] == "adaptive"
