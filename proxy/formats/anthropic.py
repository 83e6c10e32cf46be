"""Anthropic Messages clients on `POST /v1/messages`: answers and errors out; requests in anthropic_request.py,
streams in anthropic_stream.py (PROVIDERS.md §5.7, §5.8)."""
from __future__ import annotations

import logging
import secrets
import string

import orjson

from proxy.providers.base import ClientError, UpstreamError, text_of
from proxy.providers.convert import parse_arguments
from proxy.validation import parse_json_object

from .anthropic_request import NativeBody, is_int, shallow_request

log = logging.getLogger(__name__)

Event = tuple[str, dict]

_ALNUM = string.ascii_letters + string.digits
_STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}

# §5.8 "-> Anthropic client": upstream failure kind -> (status, error.type).
_UPSTREAM_ERRORS = {
    "bad_request": (400, "invalid_request_error"),
    "auth": (502, "api_error"),  # the operator's provider key failed, not the client's
    "not_found": (404, "not_found_error"),
    "too_large": (413, "request_too_large"),
    "rate_limited": (429, "rate_limit_error"),
    "overloaded": (529, "overloaded_error"),
    "server": (500, "api_error"),
    "bad_response": (502, "api_error"),  # a broken answer is the gateway's upstream failing, not a 500
    "unavailable": (502, "api_error"),
    "timeout": (504, "timeout_error"),
}
# Gateway statuses (client errors and the above) -> Anthropic error.type (§2.5).
_TYPE_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error",
                   402: "billing_error", 403: "permission_error", 404: "not_found_error",
                   409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
                   500: "api_error", 502: "api_error", 504: "timeout_error",
                   529: "overloaded_error"}


def new_message_id() -> str:
    return "msg_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def new_tool_use_id() -> str:
    return "toolu_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


# --- response: OpenAI -> Anthropic -------------------------------------------------

def to_anthropic_response(openai_response: dict, client_model: str,
                          message_id: str | None = None) -> dict:
    """OpenAI chat.completion dict -> Anthropic Message dict (§5.7 "Back to the Anthropic client")."""
    choices = openai_response.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    text = text_of(message.get("content")) or message.get("refusal") or ""
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_tool_use_id(),
                        "name": function.get("name") or "",
                        "input": parse_arguments(function.get("arguments"))})
    has_tools = any(b["type"] == "tool_use" for b in content)
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": client_model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), has_tools),
        "stop_sequence": None,
        "usage": anthropic_usage(openai_response.get("usage")),
    }


def stop_reason(finish_reason: str | None, has_tool_calls: bool = False) -> str:
    # Some upstreams report "stop" next to tool calls; the client must still see tool_use.
    if has_tool_calls and finish_reason in (None, "stop"):
        return "tool_use"
    return _STOP_REASON.get(finish_reason or "stop", "end_turn")


def anthropic_usage(usage: dict | None) -> dict:
    """OpenAI usage -> Anthropic usage: input_tokens excludes cache reads (§2.3)."""
    usage = usage or {}
    prompt = usage.get("prompt_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"input_tokens": max(0, prompt - cached),
            "output_tokens": usage.get("completion_tokens") or 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached}


def error_status_and_type(kind_or_status: str | int) -> tuple[int, str]:
    """Upstream error kind (UpstreamError.kind) or gateway status -> (status, error.type)."""
    if isinstance(kind_or_status, str) and kind_or_status in _UPSTREAM_ERRORS:
        return _UPSTREAM_ERRORS[kind_or_status]
    if isinstance(kind_or_status, str) and kind_or_status in _TYPE_BY_STATUS.values():
        status = next(s for s, t in _TYPE_BY_STATUS.items() if t == kind_or_status)
        return status, kind_or_status
    if is_int(kind_or_status):
        status = int(kind_or_status)
        fallback = "api_error" if status >= 500 else "invalid_request_error"
        return status, _TYPE_BY_STATUS.get(status, fallback)
    return _UPSTREAM_ERRORS["server"]


def error_body(status: int, type_: str | None, message: str) -> dict:
    """Anthropic error body; without type_, the type follows from the status."""
    type_ = type_ or error_status_and_type(status)[1]
    return {"type": "error", "error": {"type": type_, "message": message}}


def error_response(err: Exception) -> tuple[int, dict, dict[str, str]]:
    """A ClientError or UpstreamError -> (status, Anthropic body, extra headers)."""
    if isinstance(err, UpstreamError):
        status, type_ = error_status_and_type(err.kind)
    elif isinstance(err, ClientError):
        status, type_ = error_status_and_type(err.status)
    else:
        status, type_ = error_status_and_type("server")
    retry_after = getattr(err, "retry_after", None)
    headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
    return status, error_body(status, type_, str(err) or "The gateway failed."), headers


class AnthropicClient:
    """The Anthropic Messages client format, as the views use it."""

    endpoint = "messages"
    native_provider = "anthropic"

    def parse(self, raw: bytes) -> tuple[dict, NativeBody]:
        """(what routing and the trace need, the client's own body): one JSON parse, and the
        translation waits until routing says whether Anthropic serves it."""
        body = parse_json_object(raw)
        return shallow_request(body), NativeBody(body)

    def respond(self, response: dict, client_model: str) -> dict:
        return to_anthropic_response(response, client_model)

    def error(self, err: Exception) -> tuple[int, bytes, dict[str, str]]:
        status, body, headers = error_response(err)
        return status, orjson.dumps(body), headers

    def stream(self, chat: dict, base: dict):
        from .anthropic_stream import AnthropicStream

        return AnthropicStream(chat["model"])
