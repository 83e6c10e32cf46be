"""A fake OpenAI, Anthropic, Gemini and Ollama server on loopback, for end-to-end tests.

One aiohttp server in a background thread plays all four providers, because
their URL shapes do not overlap. Point the gateway at ``fake.base_urls[...]``.

Every request is recorded (``fake.requests``) and checked against the
provider's contract (docs/spec PROVIDERS.md); a violation gets the provider's
own error body, so a gateway bug shows up as the 400 the real provider would
send. Unscripted requests get a realistic answer: ``"echo: <last turn text>"``
with fixed usage (``PROMPT_TOKENS``/``COMPLETION_TOKENS``), or a tool call when
the request has tools and the last user text mentions ``TOOL_TRIGGER``.
``fake.script(...)`` queues errors, delays, hangs, custom streams, cut, stalled
and reset streams, and dropped connections.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROMPT_TOKENS = 10
COMPLETION_TOKENS = 5
TOTAL_TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS
ECHO_PREFIX = "echo: "
TOOL_TRIGGER = "weather"
TOOL_ARGUMENTS = {"city": "Paris"}
# Claude usually says something before calling a tool; this makes the block
# indexes differ from the tool-call indexes, as they do upstream (spec §6.3).
ANTHROPIC_TOOL_PREAMBLE = "Let me check."
TEXT_DELTAS = 3  # streamed text is split into this many deltas
ARGUMENT_FRAGMENTS = 3  # OpenAI/Anthropic tool arguments: this many fragments
# A short pause between stream events so each one arrives in its own read.
STREAM_EVENT_DELAY = 0.005


@dataclass
class RecordedRequest:
    """What the fake upstream received."""

    provider: str  # "openai", "anthropic", "gemini", "ollama", or "unknown"
    method: str
    path: str
    headers: dict[str, str]  # keys lower-cased
    query: dict[str, str]
    json: Any  # parsed body, None if absent or invalid
    raw: bytes
    received_at: float  # time.monotonic()


@dataclass
class Script:
    """A queued behaviour for the next matching request(s); see FakeUpstream.script."""

    provider: str | None = None
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stream_events: list[Any] | None = None
    hang: bool = False
    fail_mid_stream: bool | int = False  # True: half way; n: after n events (the body, if not streamed)
    stall_mid_stream: bool | int = False  # streams: as fail_mid_stream, but hang until the client leaves
    reset: bool = False  # cut or drop with a TCP reset instead of a clean close
    # Close the connection as the request arrives, unanswered and unread (counted
    # in `dropped`, not `requests`): a keep-alive connection the server closed
    # just as the client reused it.
    drop: bool = False
    event_delay: float = STREAM_EVENT_DELAY
    times: int | None = 1  # None: every matching request until reset()


@dataclass
class Disconnect:
    """A client went away before the fake finished answering."""

    provider: str
    path: str
    events_sent: int = 0  # 0: during a delay, a hang or before the first event


@dataclass
class Reply:
    """The fake model's answer before it is put into a provider's format."""

    model: str
    serial: int
    text: str | None = None
    tool_name: str | None = None


class ContractError(Exception):
    """The request breaks the provider's contract; the provider would refuse it."""

    def __init__(self, message: str, status: int = 400, **details: Any) -> None:
        super().__init__(message)
        self.message, self.status, self.details = message, status, details


# Error bodies, in each provider's format.

_OPENAI_DEFAULTS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("service_unavailable_error", "server_is_overloaded", "The server is overloaded. Please try again later."),
}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 409: "conflict_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}
GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def openai_error(
    status: int, message: str | None = None, type: str | None = None,
    code: str | None = None, param: str | None = None,
) -> dict:
    """OpenAI error body; type, code and message default from the status."""
    default_type, default_code, default_message = _OPENAI_DEFAULTS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, f"Error {status}.")
    )
    return {"error": {"message": message or default_message, "type": type or default_type,
                      "param": param, "code": code if code is not None else default_code}}


def anthropic_error(type: str, message: str, request_id: str = "req_fake") -> dict:
    """Anthropic error body, e.g. anthropic_error("overloaded_error", "Overloaded") for a 529."""
    return {"type": "error", "error": {"type": type, "message": message}, "request_id": request_id}


def gemini_error(code: int, status: str | None = None, message: str | None = None,
                 retry_delay: float | str | None = None) -> dict:
    """Google RPC status body; retry_delay (seconds or "32s") adds a RetryInfo detail."""
    error: dict[str, Any] = {"code": code, "message": message or f"Error {code}.",
                             "status": status or GEMINI_STATUSES.get(code, "UNKNOWN")}
    if retry_delay is not None:
        delay = retry_delay if isinstance(retry_delay, str) else f"{retry_delay:g}s"
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
    return {"error": error}


def ollama_error(message: str) -> dict:
    """Ollama error body."""
    return {"error": message}


# Small helpers shared by the dialects.

def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _sse(data: Any, event: str | None = None, newline: str = "\n") -> bytes:
    payload = data if isinstance(data, str) else _dumps(data)
    head = f"event: {event}{newline}" if event else ""
    return f"{head}data: {payload}{newline}{newline}".encode()


def _pieces(text: str, count: int) -> list[str]:
    """Split text into up to `count` non-empty, nearly equal pieces."""
    size = max(1, -(-len(text) // count))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _text_of(content: Any) -> str:
    """Join the text of a string, or of a list of text parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and "text" in p)
    return ""


def _require(condition: Any, message: str, status: int = 400, **details: Any) -> None:
    if not condition:
        raise ContractError(message, status, **details)


class Dialect:
    """One provider: its contract check, answer formats and framing."""

    name = ""
    stream_content_type = "text/event-stream; charset=utf-8"

    def check(self, req: RecordedRequest) -> None:
        raise NotImplementedError

    def last_turn(self, body: dict) -> tuple[str, bool]:
        """Text of the last turn, and whether it is a plain user message."""
        raise NotImplementedError

    def tool_name(self, body: dict) -> str | None:
        raise NotImplementedError

    def is_stream(self, req: RecordedRequest) -> bool:
        return req.json.get("stream") is True

    def answer(self, reply: Reply, req: RecordedRequest) -> Any:
        raise NotImplementedError

    def stream(self, reply: Reply, req: RecordedRequest) -> list[bytes]:
        raise NotImplementedError

    def frame(self, event: dict) -> bytes:
        """Frame one scripted event dict the way this provider streams."""
        return _sse(event)

    def error(self, status: int, message: str, **details: Any) -> dict:
        raise NotImplementedError

    def default_error(self, status: int) -> dict:
        raise NotImplementedError

    def response_headers(self, reply_serial: int) -> dict[str, str]:
        return {}


class OpenAIDialect(Dialect):
    name = "openai"
    _reasoning = re.compile(r"^(o\d|gpt-5|gpt-6)")
    # 5.1+ accept sampling knobs with reasoning_effort "none" (spec §1.5).
    _effort_none_ok = re.compile(r"^(gpt-5\.\d|gpt-6)")
    _roles = ("system", "developer", "user", "assistant", "tool", "function")

    def check(self, req: RecordedRequest) -> None:
        body = req.json
        _require(req.headers.get("authorization", "").startswith("Bearer "),
                 "You didn't provide an API key. You need to provide your API key in an Authorization "
                 "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", 401)
        _require(body.get("model"), "you must provide a model parameter", param="model")
        _require("messages" in body, "Missing required parameter: 'messages'.",
                 param="messages", code="missing_required_parameter")
        messages = body["messages"]
        _require(isinstance(messages, list) and messages,
                 "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                 "but got an empty array instead.", param="messages", code="empty_array")
        self._check_messages(messages)
        _require(body.get("stream_options") is None or body.get("stream") is True,
                 "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                 param="stream_options", code="invalid_value")
        model = body["model"]
        if not self._reasoning.match(model):
            return
        _require("max_tokens" not in body,
                 "Unsupported parameter: 'max_tokens' is not supported with this model. "
                 "Use 'max_completion_tokens' instead.", param="max_tokens", code="unsupported_parameter")
        if model.endswith("-chat-latest") or (
                self._effort_none_ok.match(model) and body.get("reasoning_effort") == "none"):
            return
        for knob in ("temperature", "top_p"):
            value = body.get(knob)
            _require(value is None or value == 1,
                     f"Unsupported value: '{knob}' does not support {value} with this model. "
                     "Only the default (1) value is supported.", param=knob, code="unsupported_value")

    def _check_messages(self, messages: list) -> None:
        pending: list[str] = []  # tool_call ids still waiting for a tool message
        for i, message in enumerate(messages):
            role = message.get("role")
            _require(role in self._roles, f"Invalid value: '{role}'. Supported values are: 'system', "
                     "'assistant', 'user', 'function', 'tool', and 'developer'.",
                     param=f"messages[{i}].role", code="invalid_value")
            if role == "tool":
                _require(message.get("tool_call_id") in pending,
                         "Invalid parameter: messages with role 'tool' must be a response to a "
                         "preceeding message with 'tool_calls'.", param=f"messages.[{i}].role")
                pending.remove(message["tool_call_id"])
                continue
            _require(not pending, "An assistant message with 'tool_calls' must be followed by tool "
                     "messages responding to each 'tool_call_id'. The following tool_call_ids did not "
                     f"have response messages: {', '.join(pending)}", param="messages",
                     code="invalid_value")
            pending = [c.get("id") for c in message.get("tool_calls") or []]

    def last_turn(self, body: dict) -> tuple[str, bool]:
        message = body["messages"][-1]
        return _text_of(message.get("content")), message.get("role") == "user"

    def tool_name(self, body: dict) -> str | None:
        return next((t["function"]["name"] for t in body.get("tools") or []
                     if t.get("type") == "function"), None)

    def _message(self, reply: Reply) -> dict:
        if reply.tool_name is None:
            return {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}
        call = {"id": f"call_fake{reply.serial}", "type": "function",
                "function": {"name": reply.tool_name, "arguments": json.dumps(TOOL_ARGUMENTS)}}
        return {"role": "assistant", "content": None, "refusal": None, "annotations": [], "tool_calls": [call]}

    @staticmethod
    def usage() -> dict:
        return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": TOTAL_TOKENS,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    def _head(self, reply: Reply, kind: str) -> dict:
        return {"id": f"chatcmpl-fake{reply.serial}", "object": kind, "created": int(time.time()),
                "model": reply.model, "system_fingerprint": "fp_fake", "service_tier": "default"}

    def answer(self, reply: Reply, req: RecordedRequest) -> dict:
        finish = "stop" if reply.tool_name is None else "tool_calls"
        choice = {"index": 0, "message": self._message(reply), "logprobs": None, "finish_reason": finish}
        return {**self._head(reply, "chat.completion"), "choices": [choice], "usage": self.usage()}

    def stream(self, reply: Reply, req: RecordedRequest) -> list[bytes]:
        include_usage = bool((req.json.get("stream_options") or {}).get("include_usage"))
        head = self._head(reply, "chat.completion.chunk")

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            data = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return _sse({**data, "usage": None} if include_usage else data)

        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if reply.tool_name is None:
            chunks += [chunk({"content": piece}) for piece in _pieces(reply.text, TEXT_DELTAS)]
        else:
            call = self._message(reply)["tool_calls"][0]
            first = {"index": 0, "id": call["id"], "type": "function",
                     "function": {"name": reply.tool_name, "arguments": ""}}
            chunks.append(chunk({"tool_calls": [first]}))
            chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                       for piece in _pieces(call["function"]["arguments"], ARGUMENT_FRAGMENTS)]
        chunks.append(chunk({}, "stop" if reply.tool_name is None else "tool_calls"))
        if include_usage:
            chunks.append(_sse({**head, "choices": [], "usage": self.usage()}))
        return chunks + [_sse("[DONE]")]

    def error(self, status: int, message: str, **details: Any) -> dict:
        return openai_error(status, message, details.get("type"), details.get("code"), details.get("param"))

    def default_error(self, status: int) -> dict:
        return openai_error(status)

    def response_headers(self, reply_serial: int) -> dict[str, str]:
        return {"x-request-id": f"req_fake{reply_serial}"}


class AnthropicDialect(Dialect):
    name = "anthropic"
    _tool_id = re.compile(r"^[a-zA-Z0-9_-]+$")

    def check(self, req: RecordedRequest) -> None:
        body, headers = req.json, req.headers
        _require(headers.get("x-api-key") or headers.get("authorization", "").startswith("Bearer "),
                 "x-api-key header is required", 401, type="authentication_error")
        _require(headers.get("anthropic-version"), "anthropic-version: header is required")
        _require(body.get("model"), "model: Field required")
        _require("max_tokens" in body, "max_tokens: Field required")
        _require(type(body["max_tokens"]) is int, "max_tokens: Input should be a valid integer")
        _require("messages" in body, "messages: Field required")
        messages = body["messages"]
        _require(isinstance(messages, list) and messages, "messages: at least one message is required")
        for i, message in enumerate(messages):
            self._check_message(i, message, messages)

    def _check_message(self, i: int, message: dict, messages: list) -> None:
        role = message.get("role")
        _require(role != "system", f'messages.{i}.role: Unexpected role "system". The Messages API accepts '
                 'a top-level `system` parameter, not "system" as an input message role.')
        _require(role in ("user", "assistant"), f"messages.{i}.role: Input should be 'user' or 'assistant'")
        _require(i > 0 or role == "user", 'messages: first message must use the "user" role')
        _require(i == 0 or messages[i - 1].get("role") != role, 'messages: roles must alternate between '
                 f'"user" and "assistant", but found multiple "{role}" roles in a row')
        blocks = self.blocks(message)
        is_final_assistant = role == "assistant" and i == len(messages) - 1
        _require(blocks or is_final_assistant, f"messages.{i}: all messages must have non-empty content "
                 "except for the optional final assistant message")
        for j, block in enumerate(blocks):
            _require(block.get("type") != "text" or block.get("text"),
                     f"messages.{i}.content.{j}: text content blocks must be non-empty")
            if block.get("type") == "tool_use":
                _require(self._tool_id.match(str(block.get("id", ""))),
                         f"messages.{i}.content.{j}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if role == "assistant":
            self._check_tool_results(i, blocks, messages)
        else:
            asked = [b.get("id") for b in self.blocks(messages[i - 1])] if i else []
            for j, block in enumerate(blocks):
                _require(block.get("type") != "tool_result" or block.get("tool_use_id") in asked,
                         f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                         f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                         "`tool_use` block in the previous message.")

    def _check_tool_results(self, i: int, blocks: list, messages: list) -> None:
        ids = [b.get("id") for b in blocks if b.get("type") == "tool_use"]
        following = self.blocks(messages[i + 1]) if i + 1 < len(messages) else []
        leading = list(itertools.takewhile(lambda b: b.get("type") == "tool_result", following))
        missing = [x for x in ids if x not in {b.get("tool_use_id") for b in leading}]
        if not missing:
            return
        answered_late = {b.get("tool_use_id") for b in following if b.get("type") == "tool_result"}
        _require(not set(missing) & answered_late,
                 f"messages.{i + 1}: Did not find {len(missing)} `tool_result` block(s) at the beginning of "
                 "this message. Messages following `tool_use` blocks must begin with `tool_result` blocks.")
        raise ContractError(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                            f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
                            "`tool_result` block in the next message.")

    @staticmethod
    def blocks(message: dict) -> list[dict]:
        content = message.get("content")
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if content else []
        return [b for b in content or [] if isinstance(b, dict)]

    def last_turn(self, body: dict) -> tuple[str, bool]:
        message = body["messages"][-1]
        blocks = self.blocks(message)
        results = [b for b in blocks if b.get("type") == "tool_result"]
        if results:
            return "".join(_text_of(b.get("content")) for b in results), False
        return _text_of(blocks), message.get("role") == "user"

    def tool_name(self, body: dict) -> str | None:
        return next((t["name"] for t in body.get("tools") or [] if "input_schema" in t), None)

    def _content(self, reply: Reply) -> list[dict]:
        if reply.tool_name is None:
            return [{"type": "text", "text": reply.text}]
        return [{"type": "text", "text": ANTHROPIC_TOOL_PREAMBLE},
                {"type": "tool_use", "id": f"toolu_fake{reply.serial}", "name": reply.tool_name,
                 "input": TOOL_ARGUMENTS}]

    @staticmethod
    def usage(output_tokens: int = COMPLETION_TOKENS) -> dict:
        return {"input_tokens": PROMPT_TOKENS, "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "service_tier": "standard"}

    def _message(self, reply: Reply, content: list, stop_reason: str | None, usage: dict) -> dict:
        return {"id": f"msg_fake{reply.serial}", "type": "message", "role": "assistant", "model": reply.model,
                "content": content, "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}

    def answer(self, reply: Reply, req: RecordedRequest) -> dict:
        stop = "end_turn" if reply.tool_name is None else "tool_use"
        return self._message(reply, self._content(reply), stop, self.usage())

    def stream(self, reply: Reply, req: RecordedRequest) -> list[bytes]:
        events = [{"type": "message_start", "message": self._message(reply, [], None, self.usage(1))}]
        for index, block in enumerate(self._content(reply)):
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"], TEXT_DELTAS)]
            else:
                start = {**block, "input": {}}
                arguments = json.dumps(block["input"])
                # The first input_json_delta is often empty upstream (spec §2.4).
                deltas = [{"type": "input_json_delta", "partial_json": p}
                          for p in ["", *_pieces(arguments, ARGUMENT_FRAGMENTS)]]
            events.append({"type": "content_block_start", "index": index, "content_block": start})
            if index == 0:
                events.append({"type": "ping"})
            events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
            events.append({"type": "content_block_stop", "index": index})
        stop = "end_turn" if reply.tool_name is None else "tool_use"
        events.append({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                       "usage": {"output_tokens": COMPLETION_TOKENS}})
        events.append({"type": "message_stop"})
        return [self.frame(e) for e in events]

    def frame(self, event: dict) -> bytes:
        return _sse(event, event=event.get("type"))

    def error(self, status: int, message: str, **details: Any) -> dict:
        return anthropic_error(details.get("type") or ANTHROPIC_ERROR_TYPES.get(status, "api_error"), message)

    def default_error(self, status: int) -> dict:
        error_type = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        message = {529: "Overloaded", 500: "Internal server error",
                   429: "Number of request tokens has exceeded your per-minute rate limit"}.get(status, error_type)
        return anthropic_error(error_type, message)

    def response_headers(self, reply_serial: int) -> dict[str, str]:
        return {"request-id": f"req_fake{reply_serial}"}


class GeminiDialect(Dialect):
    name = "gemini"
    stream_content_type = "text/event-stream"

    def check(self, req: RecordedRequest) -> None:
        body = req.json
        _require(req.headers.get("x-goog-api-key"), "Method doesn't allow unregistered callers (callers "
                 "without established identity). Please use API Key or other form of API consumer identity "
                 "to call this API.", 403)
        contents = body.get("contents")
        _require(isinstance(contents, list) and contents,
                 "* GenerateContentRequest.contents: contents is not specified\n")
        for i, content in enumerate(contents):
            _require(content.get("role", "user") in ("user", "model"), "Please use a valid role: user, model.")
            _require(content.get("parts"),
                     f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n")

    def is_stream(self, req: RecordedRequest) -> bool:
        return req.path.endswith(":streamGenerateContent") and req.query.get("alt") == "sse"

    def last_turn(self, body: dict) -> tuple[str, bool]:
        content = body["contents"][-1]
        parts = content.get("parts") or []
        results = [p["functionResponse"].get("response") for p in parts if "functionResponse" in p]
        if results:
            return "".join(r.get("output") if isinstance(r.get("output"), str) else json.dumps(r)
                           for r in results if isinstance(r, dict)), False
        return _text_of(parts), content.get("role", "user") == "user"

    def tool_name(self, body: dict) -> str | None:
        return next((d["name"] for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []),
                    None)

    @staticmethod
    def usage(final: bool = True) -> dict:
        if not final:
            return {"promptTokenCount": PROMPT_TOKENS, "totalTokenCount": PROMPT_TOKENS}
        return {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": COMPLETION_TOKENS,
                "totalTokenCount": TOTAL_TOKENS,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]}

    def _chunk(self, reply: Reply, parts: list[dict], final: bool) -> dict:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if final:
            candidate["finishReason"] = "STOP"  # also after a function call: Gemini has no tool finish reason
        return {"candidates": [candidate], "usageMetadata": self.usage(final),
                "modelVersion": reply.model, "responseId": f"fake{reply.serial}"}

    def _parts(self, reply: Reply) -> list[list[dict]]:
        """The answer's parts, grouped by stream chunk; function calls arrive whole."""
        if reply.tool_name is not None:
            return [[{"functionCall": {"name": reply.tool_name, "args": TOOL_ARGUMENTS}}]]
        return [[{"text": p}] for p in _pieces(reply.text, TEXT_DELTAS)]

    def answer(self, reply: Reply, req: RecordedRequest) -> Any:
        groups = self._parts(reply)
        if req.path.endswith(":streamGenerateContent"):  # without alt=sse: one JSON array
            return [self._chunk(reply, parts, i == len(groups) - 1) for i, parts in enumerate(groups)]
        whole = [{"text": reply.text}] if reply.tool_name is None else groups[0]
        return self._chunk(reply, whole, True)

    def stream(self, reply: Reply, req: RecordedRequest) -> list[bytes]:
        return [self.frame(chunk) for chunk in self.answer(reply, req)]

    def frame(self, event: dict) -> bytes:
        return _sse(event, newline="\r\n")  # Gemini frames its SSE with CRLF

    def error(self, status: int, message: str, **details: Any) -> dict:
        return gemini_error(status, message=message)

    def default_error(self, status: int) -> dict:
        return gemini_error(status)


class OllamaDialect(Dialect):
    name = "ollama"
    stream_content_type = "application/x-ndjson"

    def check(self, req: RecordedRequest) -> None:
        body = req.json
        _require(body.get("model"), "model is required")
        _require(isinstance(body.get("messages"), list), "messages is required")
        # Ollama streams unless told otherwise, so the gateway must always say.
        _require(isinstance(body.get("stream"), bool), "stream must be sent explicitly (Ollama defaults to true)")

    def last_turn(self, body: dict) -> tuple[str, bool]:
        if not body["messages"]:
            return "", False
        message = body["messages"][-1]
        return _text_of(message.get("content")), message.get("role") == "user"

    tool_name = OpenAIDialect.tool_name

    def _line(self, reply: Reply, message: dict, done: bool) -> dict:
        line = {"model": reply.model, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
                "message": {"role": "assistant", **message}, "done": done}
        if done:
            line.update(done_reason="stop", total_duration=500_000_000, load_duration=1_000_000,
                        prompt_eval_count=PROMPT_TOKENS, prompt_eval_duration=100_000_000,
                        eval_count=COMPLETION_TOKENS, eval_duration=300_000_000)
        return line

    def _messages(self, reply: Reply) -> list[dict]:
        if reply.tool_name is not None:
            call = {"function": {"name": reply.tool_name, "arguments": TOOL_ARGUMENTS}}
            return [{"content": "", "tool_calls": [call]}]
        return [{"content": p} for p in _pieces(reply.text, TEXT_DELTAS)]

    def answer(self, reply: Reply, req: RecordedRequest) -> dict:
        messages = self._messages(reply)
        merged = {**messages[0], "content": "".join(m["content"] for m in messages)}
        return self._line(reply, merged, True)

    def stream(self, reply: Reply, req: RecordedRequest) -> list[bytes]:
        lines = [self._line(reply, m, False) for m in self._messages(reply)]
        return [self.frame(line) for line in [*lines, self._line(reply, {"content": ""}, True)]]

    def frame(self, event: dict) -> bytes:
        return (_dumps(event) + "\n").encode()

    def error(self, status: int, message: str, **details: Any) -> dict:
        return ollama_error(message)

    def default_error(self, status: int) -> dict:
        return ollama_error({404: "model not found", 429: "too many requests"}.get(status, f"error {status}"))


DIALECTS = {d.name: d for d in (OpenAIDialect(), AnthropicDialect(), GeminiDialect(), OllamaDialect())}


class FakeUpstream:
    """The four providers on one loopback port; use as a context manager or start()/stop()."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port: int | None = None
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[Disconnect] = []
        self.dropped: list[str] = []  # providers whose request was dropped by a `drop` script
        self._scripts: list[Script] = []
        self._lock = threading.Lock()
        self._serial = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_urls(self) -> dict[str, str]:
        """Base URLs as the adapters expect them (OpenAI's includes /v1)."""
        return {"openai": f"{self.url}/v1", "anthropic": self.url, "gemini": self.url, "ollama": self.url}

    # Lifecycle

    def start(self) -> FakeUpstream:
        ready, failure = threading.Event(), []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._serve())
            except Exception as exc:  # handed to the starting thread
                failure.append(exc)
            ready.set()
            if not failure:
                loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path, provider in (("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic"),
                               ("/v1beta/models/{target}", "gemini"), ("/api/chat", "ollama")):
            app.router.add_post(path, self._handler(provider))
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        # handler_cancellation: a client going away cancels its handler, which
        # is how disconnects are noticed during delays and hangs.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _shutdown(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()
        await self._runner.cleanup()

    # Scripting and inspection

    def script(
        self, provider: str | None = None, status: int = 200, body: Any = None,
        headers: dict[str, str] | None = None, delay: float = 0.0, stream_events: list[Any] | None = None,
        hang: bool = False, fail_mid_stream: bool | int = False, times: int | None = 1,
        event_delay: float = STREAM_EVENT_DELAY, stall_mid_stream: bool | int = False,
        reset: bool = False, drop: bool = False,
    ) -> Script:
        """Queue a behaviour for the next `times` requests to `provider` (None: any provider)."""
        assert provider is None or provider in DIALECTS, provider
        script = Script(provider, status, body, dict(headers or {}), delay, stream_events, hang,
                        fail_mid_stream, stall_mid_stream, reset, drop, event_delay, times)
        with self._lock:
            self._scripts.append(script)
        return script

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
        self.requests.clear()
        self.disconnects.clear()
        self.dropped.clear()

    def requests_for(self, provider: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.provider == provider]

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    def wait_for_disconnects(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until `count` disconnects were seen (handlers notice them asynchronously)."""
        deadline = time.monotonic() + timeout
        while len(self.disconnects) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.disconnects) >= count

    async def wait_for_disconnects_async(self, count: int = 1, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.disconnects) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return len(self.disconnects) >= count

    def _take_script(self, provider: str, drop: bool = False) -> Script | None:
        """The next script for `provider`; with drop=True only if it is a drop script."""
        with self._lock:
            for script in self._scripts:
                if script.provider in (None, provider):
                    if script.drop != drop:
                        return None
                    if script.times is not None:
                        script.times -= 1
                        if script.times <= 0:
                            self._scripts.remove(script)
                    return script
        return None

    # Request handling

    async def _record(self, request: web.Request, provider: str) -> RecordedRequest:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = RecordedRequest(provider, request.method, request.path,
                                   {k.lower(): v for k, v in request.headers.items()},
                                   dict(request.query), body, raw, time.monotonic())
        self.requests.append(recorded)
        return recorded

    async def _unknown(self, request: web.Request) -> web.Response:
        await self._record(request, "unknown")
        return web.json_response({"error": f"fake upstream: no route for {request.method} {request.path}"},
                                 status=404)

    def _handler(self, provider: str):
        dialect = DIALECTS[provider]

        async def handle(request: web.Request) -> web.StreamResponse:
            script = self._take_script(provider, drop=True)
            if script is not None:
                self.dropped.append(provider)
                _close(request, script.reset)
                return web.Response()  # never sent: the connection is gone
            recorded = await self._record(request, provider)
            progress = Disconnect(provider, request.path)
            try:
                return await self._respond(request, dialect, recorded, progress)
            except asyncio.CancelledError:
                self.disconnects.append(progress)
                raise
            except ConnectionError:
                self.disconnects.append(progress)
                return web.Response()  # never sent: the connection is gone

        return handle

    async def _respond(self, request: web.Request, dialect: Dialect, recorded: RecordedRequest,
                       progress: Disconnect) -> web.StreamResponse:
        body = recorded.json
        try:
            _require(isinstance(body, dict), "Invalid JSON body")
            if dialect.name == "gemini":
                _require(request.match_info["target"].endswith((":generateContent", ":streamGenerateContent")),
                         f"Unknown method: {request.match_info['target']}", 404)
            dialect.check(recorded)
            serial = next(self._serial)
            reply = self._reply(dialect, recorded, serial)
        except ContractError as refusal:
            return web.json_response(dialect.error(refusal.status, refusal.message, **refusal.details),
                                     status=refusal.status)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:  # a field of the wrong shape
            return web.json_response(dialect.error(400, f"Invalid request body: {exc!r}"), status=400)
        # The contract is checked before a script is used, so a broken request
        # fails loudly instead of silently consuming a scripted error.
        script = self._take_script(dialect.name) or Script()
        if script.delay:
            await asyncio.sleep(script.delay)
        if script.hang:
            return await self._hang(request)
        headers = {**dialect.response_headers(serial), **script.headers}
        if script.stream_events is not None:
            frames = [dialect.frame(e) if isinstance(e, dict) else e for e in script.stream_events]
            return await self._stream(request, dialect, frames, headers, script, progress)
        if script.status != 200 or script.body is not None:
            return self._fixed(dialect, script, headers)
        if dialect.is_stream(recorded):
            return await self._stream(request, dialect, dialect.stream(reply, recorded), headers, script, progress)
        payload = _dumps(dialect.answer(reply, recorded)).encode()
        if script.fail_mid_stream:
            return await self._cut_body(request, payload, headers, script.reset)
        return web.Response(body=payload, headers=headers, content_type="application/json")

    @staticmethod
    def _reply(dialect: Dialect, recorded: RecordedRequest, serial: int) -> Reply:
        body = recorded.json
        model = body.get("model") or recorded.path.rsplit("/", 1)[-1].split(":")[0]
        text, is_user = dialect.last_turn(body)
        tool = dialect.tool_name(body)
        if tool and is_user and TOOL_TRIGGER in text.lower():
            return Reply(model, serial, tool_name=tool)
        return Reply(model, serial, text=ECHO_PREFIX + text)

    @staticmethod
    def _fixed(dialect: Dialect, script: Script, headers: dict[str, str]) -> web.Response:
        body = script.body if script.body is not None else dialect.default_error(script.status)
        if isinstance(body, (dict, list)):
            return web.Response(status=script.status, body=_dumps(body), headers=headers,
                                content_type="application/json")
        data = body.encode() if isinstance(body, str) else body
        return web.Response(status=script.status, body=data, headers={"Content-Type": "text/plain", **headers})

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        assert self._stopping is not None
        await self._stopping.wait()  # a client disconnect cancels this instead
        if request.transport is not None:
            request.transport.close()
        return web.Response()

    async def _stream(self, request: web.Request, dialect: Dialect, frames: list[bytes | str],
                      headers: dict[str, str], script: Script, progress: Disconnect) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": dialect.stream_content_type,
                                               "Cache-Control": "no-cache", **headers})
        await response.prepare(request)
        cut_at, stall_at = (_position(option, len(frames)) for option in (script.fail_mid_stream,
                                                                           script.stall_mid_stream))
        for index, frame in enumerate(frames):
            if index == cut_at:
                _close(request, script.reset)
                return response
            if index == stall_at:
                return await self._hang(request)
            await response.write(frame.encode() if isinstance(frame, str) else frame)
            progress.events_sent += 1
            await asyncio.sleep(script.event_delay)
        await response.write_eof()
        return response

    @staticmethod
    async def _cut_body(request: web.Request, payload: bytes, headers: dict[str, str],
                        reset: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        await asyncio.sleep(0.01)
        _close(request, reset)
        return response


def _position(option: bool | int, count: int) -> int | None:
    """Where a mid-stream option applies: True is half way, n after n events."""
    if option is False:
        return None
    return max(1, count // 2) if option is True else int(option)


def _close(request: web.Request, reset: bool) -> None:
    """Closes the connection; what was written is flushed first (but for a reset, which drops it)."""
    transport = request.transport
    if transport is None:
        return
    if reset:  # linger 0: the close sends RST instead of FIN
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
