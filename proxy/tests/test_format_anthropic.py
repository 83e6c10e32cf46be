"""Anthropic clients on /v1/messages: request in, answer and stream out, errors (PROVIDERS.md §5.7, §5.8).

Table-driven over fixtures/anthropic_client/:
  request_*.json        Anthropic request -> expected OpenAI request (internal form)
  invalid_requests.json Anthropic requests the gateway refuses -> ClientError param/message
  response_*.json       OpenAI chat.completion -> expected Anthropic Message
  stream_*.json         OpenAI chunks + finish() arguments -> expected event sequence and the
                        message the Anthropic SDK reassembles from those events

Outputs are checked with the installed SDKs' own types, and streams are replayed through
a real `anthropic.Anthropic` client (the bytes served by an httpx2 transport).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import anthropic
import httpx2
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import ErrorResponse, Message, RawMessageStreamEvent
from openai.types.chat.completion_create_params import CompletionCreateParamsBase

from proxy.formats.anthropic_stream import StreamTranslator
from proxy.formats.anthropic import error_body, error_response, error_status_and_type, to_anthropic_response
from proxy.formats.anthropic_request import validate_and_convert
from proxy.providers.base import ClientError, UpstreamError
from proxy.sse import named_event

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic_client"
MESSAGE_ID = re.compile(r"^msg_[A-Za-z0-9]{24}$")
TOOL_USE_ID = re.compile(r"^toolu_[A-Za-z0-9]{24}$")
EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)
OPENAI_REQUEST = pydantic.TypeAdapter(CompletionCreateParamsBase)


def load(path: Path):
    return json.loads(path.read_text())


def fixtures(prefix: str) -> list:
    return [pytest.param(p, id=p.stem) for p in sorted(FIXTURES.glob(f"{prefix}_*.json"))]


def match_generated(actual, expected):
    """Fill "<generated>" / "<generated toolu>" in expected from actual, checking the id shape."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key, value in expected.items():
            if value in ("<generated>", "<generated toolu>"):
                shape = MESSAGE_ID if value == "<generated>" else TOOL_USE_ID
                assert shape.match(actual.get(key, "")), actual.get(key)
                expected[key] = actual[key]
            else:
                match_generated(actual.get(key), value)
    elif isinstance(expected, list) and isinstance(actual, list):
        for a, e in zip(actual, expected):
            match_generated(a, e)
    return expected


def run_stream(case: dict, message_id: str = "msg_test") -> list[tuple[str, dict]]:
    translator = StreamTranslator(case["client_model"], message_id)
    events = translator.start()
    for chunk in case["chunks"]:
        events += translator.feed(chunk)
    events += translator.finish(case["finish"]["finish_reason"], case["finish"]["usage"])
    return events


def label(name: str, payload: dict) -> str:
    """Compact event label used by the fixtures' expected sequences."""
    if name == "content_block_start":
        return f"content_block_start:{payload['content_block']['type']}"
    if name == "content_block_delta":
        return payload["delta"]["type"]
    if name == "message_delta":
        return f"message_delta:{payload['delta']['stop_reason']}"
    return name


def sdk_client(handler) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-sf-test", base_url="http://gateway.test", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def sse_body(events: list[tuple[str, dict]]) -> bytes:
    return b"".join(named_event(name, payload) for name, payload in events)


def stream_through_sdk(events: list[tuple[str, dict]]) -> Message:
    """Serve the events as the gateway would and let the real SDK reassemble them."""
    def handler(request):
        return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                               content=sse_body(events))

    with sdk_client(handler).messages.stream(
            model="claude-sonnet-4-6", max_tokens=100,
            messages=[{"role": "user", "content": "hi"}]) as stream:
        for _ in stream:
            pass
        return stream.get_final_message()


# --- requests -------------------------------------------------------------------

@pytest.mark.parametrize("path", fixtures("request"))
def test_it_converts_requests(path):
    case = load(path)
    chat = validate_and_convert(case["request"])
    assert chat == case["expected"]
    OPENAI_REQUEST.validate_python(chat)  # the OpenAI SDK's own request type accepts it


def test_it_does_not_modify_the_client_body():
    case = load(FIXTURES / "request_tool_conversation.json")
    before = json.dumps(case["request"], sort_keys=True)
    validate_and_convert(case["request"])
    assert json.dumps(case["request"], sort_keys=True) == before


INVALID = load(FIXTURES / "invalid_requests.json")


@pytest.mark.parametrize("case", INVALID, ids=[c["id"] for c in INVALID])
def test_it_rejects_invalid_requests(case):
    with pytest.raises(ClientError) as caught:
        validate_and_convert(case["request"])
    assert caught.value.status == 400
    assert caught.value.param == case["param"]
    assert case["message"] in caught.value.message


# --- responses ------------------------------------------------------------------

@pytest.mark.parametrize("path", fixtures("response"))
def test_it_converts_responses(path):
    case = load(path)
    out = to_anthropic_response(case["openai"], case["client_model"])
    assert out == match_generated(out, case["expected"])
    Message.model_validate(out)


def test_it_uses_the_given_message_id():
    case = load(FIXTURES / "response_text.json")
    assert to_anthropic_response(case["openai"], "m", message_id="msg_fixed")["id"] == "msg_fixed"


def test_it_returns_messages_the_sdk_parses():
    case = load(FIXTURES / "response_tool_calls.json")
    body = to_anthropic_response(case["openai"], case["client_model"])
    client = sdk_client(lambda request: httpx2.Response(200, json=body))
    message = client.messages.create(model="claude-opus-4-7", max_tokens=100,
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].input == {"city": "Paris", "units": {"temp": "C"}}


# --- streams --------------------------------------------------------------------

@pytest.mark.parametrize("path", fixtures("stream"))
def test_it_translates_streams(path):
    case = load(path)
    events = run_stream(case)
    expected = case["expected"]
    assert [label(n, p) for n, p in events] == expected["events"]

    started, stopped = [], []
    snapshot, json_bufs = None, {}
    for name, payload in events:
        assert name == payload["type"]
        event = EVENT.validate_python(payload)  # the SDK's own event types accept every payload
        if name == "content_block_start":
            assert payload["index"] == len(started)  # blocks are numbered 0, 1, 2...
            started.append(payload["index"])
        elif name == "content_block_delta":
            assert payload["index"] in started
        elif name == "content_block_stop":
            assert payload["index"] in started and payload["index"] not in stopped
            stopped.append(payload["index"])
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert stopped == started
    assert "[DONE]" not in json.dumps(events)

    final = snapshot.to_dict()
    assert final["id"] == "msg_test" and final["model"] == case["client_model"]
    assert final["content"] == match_generated(final["content"], expected["content"])
    assert final["stop_reason"] == expected["stop_reason"]
    usage = final["usage"]
    assert {k: usage[k] for k in expected["usage"]} == expected["usage"]


@pytest.mark.parametrize("path", fixtures("stream"))
def test_it_streams_what_the_sdk_reassembles(path):
    case = load(path)
    message = stream_through_sdk(run_stream(case)).to_dict()
    expected = case["expected"]
    assert message["content"] == match_generated(message["content"], expected["content"])
    assert message["stop_reason"] == expected["stop_reason"]
    assert message["usage"]["output_tokens"] == expected["usage"]["output_tokens"]


def test_it_delivers_streamed_tool_arguments_complete():
    """Regression: tool-call arguments lost or empty when streaming /v1/messages to a
    non-Anthropic provider. Split the arguments at every possible byte boundary."""
    arguments = json.dumps({"path": "/tmp/a b.txt", "lines": [1, 2, 3], "note": "naïve ☕",
                            "nested": {"ok": True, "none": None}}, ensure_ascii=False)
    for size in (1, 2, 3, 7, len(arguments)):
        pieces = [arguments[i:i + size] for i in range(0, len(arguments), size)]
        translator = StreamTranslator("claude-sonnet-4-6", "msg_x")
        events = translator.start()
        events += translator.feed({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "write_file", "arguments": pieces[0]}}]}}]})
        for piece in pieces[1:]:
            events += translator.feed({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": piece}}]}}]})
        events += translator.finish("tool_calls", None)
        sent = "".join(p["delta"]["partial_json"] for n, p in events
                       if n == "content_block_delta")
        assert sent == arguments
        tool_use = stream_through_sdk(events).content[0]
        assert tool_use.type == "tool_use" and tool_use.name == "write_file"
        assert tool_use.input == json.loads(arguments)


def test_it_accepts_usage_on_a_chunk_and_reasons_from_chunks():
    translator = StreamTranslator("claude-sonnet-4-6")
    events = translator.feed({"choices": [{"index": 0, "delta": {"content": "hi"},
                                           "finish_reason": "length"}],
                              "usage": {"prompt_tokens": 4, "completion_tokens": 1}})
    assert events[0][0] == "message_start"  # feed() starts the message if start() was skipped
    assert MESSAGE_ID.match(events[0][1]["message"]["id"])
    events = translator.finish()
    assert events[-2][1] == {"type": "message_delta",
                             "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                             "usage": {"output_tokens": 1, "input_tokens": 4,
                                       "cache_read_input_tokens": 0}}


def test_it_reports_known_input_tokens_at_start():
    (name, payload), = StreamTranslator("m", "msg_a").start(input_tokens=42)
    assert payload["message"]["usage"]["input_tokens"] == 42
    assert StreamTranslator("m", "msg_a").start()[0][1]["message"]["usage"]["input_tokens"] == 0


def test_it_ignores_other_choices_and_empty_fragments():
    translator = StreamTranslator("m", "msg_a")
    translator.start()
    assert translator.feed({"choices": [{"index": 1, "delta": {"content": "other"}}]}) == []
    assert translator.feed({"choices": [{"index": 0, "delta": {"content": ""}}]}) == []
    assert translator.feed({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}) == []


def test_it_finishes_once_and_ignores_later_input():
    translator = StreamTranslator("m", "msg_a")
    assert [n for n, _ in translator.finish("stop", None)] == [
        "message_start", "message_delta", "message_stop"]
    assert translator.finish("stop", None) == []
    assert translator.feed({"choices": [{"index": 0, "delta": {"content": "late"}}]}) == []
    assert translator.error("server", "late") == []
    assert translator.start() == []


def test_it_sends_an_in_band_error_the_sdk_raises():
    translator = StreamTranslator("claude-sonnet-4-6", "msg_e")
    events = translator.start()
    events += translator.feed({"choices": [{"index": 0, "delta": {"content": "partial"}}]})
    events += translator.error("overloaded", "openai: upstream overloaded")
    assert events[-1] == ("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "openai: upstream overloaded"}})
    ErrorResponse.model_validate(events[-1][1])
    assert translator.feed({"choices": [{"index": 0, "delta": {"content": "more"}}]}) == []
    with pytest.raises(anthropic.APIStatusError) as caught:
        stream_through_sdk(events)
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_it_turns_an_openai_error_chunk_into_an_error_event():
    translator = StreamTranslator("m", "msg_a")
    translator.start()
    (name, payload), = translator.feed({"error": {"message": "boom", "type": "server_error"}})
    assert name == "error" and payload["error"] == {"type": "api_error", "message": "boom"}


# --- errors ---------------------------------------------------------------------

ERROR_TABLE = [
    # upstream failure kinds (§5.8 "-> Anthropic client")
    ("bad_request", 400, "invalid_request_error", anthropic.BadRequestError),
    ("auth", 502, "api_error", anthropic.InternalServerError),
    ("not_found", 404, "not_found_error", anthropic.NotFoundError),
    ("too_large", 413, "request_too_large", anthropic.RequestTooLargeError),
    ("rate_limited", 429, "rate_limit_error", anthropic.RateLimitError),
    ("overloaded", 529, "overloaded_error", anthropic.OverloadedError),
    ("server", 500, "api_error", anthropic.InternalServerError),
    ("unavailable", 502, "api_error", anthropic.InternalServerError),
    ("timeout", 504, "timeout_error", anthropic.InternalServerError),
    # gateway client errors, by status
    (400, 400, "invalid_request_error", anthropic.BadRequestError),
    (401, 401, "authentication_error", anthropic.AuthenticationError),
    (403, 403, "permission_error", anthropic.PermissionDeniedError),
    (404, 404, "not_found_error", anthropic.NotFoundError),
    (413, 413, "request_too_large", anthropic.RequestTooLargeError),
    (429, 429, "rate_limit_error", anthropic.RateLimitError),
    (502, 502, "api_error", anthropic.InternalServerError),
    (504, 504, "timeout_error", anthropic.InternalServerError),
]


@pytest.mark.parametrize("source,status,type_,sdk_error", ERROR_TABLE,
                         ids=[str(row[0]) for row in ERROR_TABLE])
def test_it_maps_errors_for_anthropic_clients(source, status, type_, sdk_error):
    assert error_status_and_type(source) == (status, type_)
    body = error_body(status, type_, "what went wrong")
    assert body == {"type": "error", "error": {"type": type_, "message": "what went wrong"}}
    if type_ != "request_too_large":
        # SDK 2.10's ErrorObject union omits request_too_large, which the API documents
        # for 413 (PROVIDERS.md §2.5); the SDK still raises RequestTooLargeError below.
        ErrorResponse.model_validate(body)
    client = sdk_client(lambda request: httpx2.Response(status, json=body))
    with pytest.raises(sdk_error) as caught:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == type_


def test_it_derives_the_type_from_the_status():
    assert error_body(429, None, "slow down")["error"]["type"] == "rate_limit_error"
    assert error_status_and_type(418) == (418, "invalid_request_error")
    assert error_status_and_type("no_such_kind") == (500, "api_error")


def test_it_builds_error_responses_from_exceptions():
    status, body, headers = error_response(UpstreamError("rate_limited", "openai: slow down",
                                                         upstream_status=429, retry_after=7))
    assert (status, body["error"]["type"], headers) == (429, "rate_limit_error",
                                                        {"retry-after": "7"})
    status, body, headers = error_response(ClientError("Invalid API key.", status=401))
    assert (status, body, headers) == (401, {"type": "error", "error": {
        "type": "authentication_error", "message": "Invalid API key."}}, {})
    status, body, _ = error_response(ClientError("Model not allowed.", status=403,
                                                 type="permission_error"))
    assert (status, body["error"]["type"]) == (403, "permission_error")
