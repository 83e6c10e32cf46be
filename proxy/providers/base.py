"""The one interface every provider adapter implements, and the types it speaks.

The internal form is the OpenAI Chat Completions request and response (plain
dicts). Adapters translate that form to and from their provider's wire format;
they never make network calls and never read settings: the base URL and key
are passed in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: dict[str, Any]
    # Client parameters the adapter removed or rewrote, recorded in the trace.
    dropped: list[str] = field(default_factory=list)


@dataclass
class UpstreamError(Exception):
    """A provider failure, classified in provider-neutral terms.

    kind is one of: bad_request, auth, not_found, too_large, rate_limited,
    overloaded, server (the provider said it failed), bad_response (its answer
    broke off or is not in its format), timeout, unavailable (it could not be
    reached, or dropped the connection without answering).
    """

    kind: str
    message: str
    upstream_status: int | None = None
    upstream_code: str | None = None
    retry_after: int | None = None
    param: str | None = None

    def __str__(self) -> str:
        return self.message


class ClientError(Exception):
    """Input the gateway itself refuses (before any upstream call)."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error",
                 retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type
        self.retry_after = retry_after


@dataclass
class StreamState:
    """Mutable per-stream state an adapter keeps between events."""

    started: bool = False
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    tool_index: dict[Any, int] = field(default_factory=dict)
    tool_count: int = 0
    has_tool_calls: bool = False
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Provider:
    """Base class for provider adapters (pure translation functions)."""

    name: str = ""
    # "sse" or "ndjson": how upstream.py splits a streamed body into events.
    stream_format: str = "sse"
    # The event field that ends a complete stream, named when a body ends without it.
    stream_end: str = "a finish reason"

    def build_request(self, chat: dict, model: str, base_url: str,
                      api_key: str | None) -> UpstreamRequest:
        """chat: the OpenAI-format request (internal form); model: upstream model."""
        raise NotImplementedError

    def build_native_request(self, body: dict, model: str, base_url: str, api_key: str | None,
                             client_headers: dict[str, str]) -> UpstreamRequest:
        """A body already in this provider's wire format (the client speaks it), sent as it is
        but for the model, so nothing the internal form cannot carry is lost."""
        raise NotImplementedError

    def parse_response(self, body: dict) -> dict:
        """Upstream JSON body -> OpenAI chat.completion dict.

        Returns at least choices and usage; the gateway sets id, model, created.
        """
        raise NotImplementedError

    def parse_stream_event(self, event: dict, state: StreamState) -> list[dict]:
        """One parsed upstream stream event -> OpenAI chunk bodies.

        Each returned dict has "choices" (and optionally "usage"); the gateway
        adds id/object/created/model. Usage is kept on state.usage, the
        finish reason on state.finish_reason.
        """
        raise NotImplementedError

    def finish_stream(self, state: StreamState) -> list[dict]:
        """Called when the upstream body ends; returns any closing chunks.

        A body that ends before the stream's end marker was cut off (the answer
        may be incomplete): it fails instead of finishing as "stop".
        """
        if not state.finished:
            raise cut_off(self.name, f"the stream ended before {self.stream_end}")
        return []

    def classify_error(self, status: int, body: Any, headers: dict[str, str]) -> UpstreamError:
        """Upstream HTTP error (status, parsed JSON or text body) -> UpstreamError."""
        raise NotImplementedError


# --- shared building blocks for adapters ---------------------------------

# What an adapter raises on a provider answer of the wrong shape (a missing key,
# a wrong type); the gateway reports it as the provider's fault, not its own.
SHAPE_ERRORS = (LookupError, TypeError, AttributeError, ValueError)


def malformed(provider: str, what: str, exc: Exception) -> UpstreamError:
    detail = f"{type(exc).__name__}: {exc}"[:200]
    return UpstreamError("bad_response", f"{provider}: the provider's {what} is not in its documented "
                         f"format ({detail}).")


def expect_text(value: Any, what: str) -> str:
    """value, if it is a string (text passed on to the client must be)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} is {type(value).__name__}, not a string")
    return value


def cut_off(provider: str, how: str) -> UpstreamError:
    return UpstreamError("bad_response", f"{provider}: the answer was cut off: {how}.")


# orjson writes at most 254 levels. What the gateway builds around a client's value (a
# translation, the trace's prompt) nests a few levels deeper than the value, hence the headroom.
MAX_DEPTH = 246
_HEADROOM = 254 - MAX_DEPTH


def check_depth(value: Any, what: str = "The request") -> None:
    """Refuse a value nested deeper than MAX_DEPTH, which could not be sent on or traced.

    orjson's own limit is the test: one dump of the value inside _HEADROOM lists, in C
    (about a tenth of a parse's time), where a Python walk would cost as much as the parse.
    """
    for _ in range(_HEADROOM):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise ClientError(f"{what} nests values more than {MAX_DEPTH} levels deep. Send a flatter body.",
                          code="invalid_json") from None


_KIND_BY_STATUS = {400: "bad_request", 401: "auth", 402: "auth", 403: "auth",
                   404: "not_found", 408: "timeout", 413: "too_large",
                   429: "rate_limited", 503: "overloaded", 529: "overloaded",
                   504: "timeout"}


def kind_for_status(status: int) -> str:
    return _KIND_BY_STATUS.get(status, "server" if status >= 500 else "bad_request")


def retry_after_from(headers: dict[str, str]) -> int | None:
    """Seconds to wait, from retry-after or retry-after-ms (rounded up)."""
    value = headers.get("retry-after")
    if value:
        try:
            return max(0, int(float(value) + 0.999))
        except ValueError:
            pass
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0, int(-(-float(value) // 1000)))
        except ValueError:
            pass
    return None


def text_of(content: Any) -> str:
    """OpenAI message content (string, parts list or None) -> plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content
                   if isinstance(p, dict) and p.get("type") in ("text", "refusal"))


def usage_dict(prompt: int, completion: int, total: int | None = None,
               cached: int = 0, reasoning: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion if total is None else total,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
