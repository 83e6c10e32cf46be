"""OpenAI Chat Completions adapter: mostly pass-through, plus the model-family fixes of PROVIDERS.md §5.6."""
from __future__ import annotations

import re
from typing import Any

from . import convert
from .base import (Provider, StreamState, UpstreamError, UpstreamRequest, expect_text, kind_for_status,
                   retry_after_from, usage_dict)

# Reasoning models reject max_tokens and non-default sampling (§1.5).
_O_SERIES = re.compile(r"^o[134](?:$|-)")
_GPT5 = re.compile(r"^gpt-5(?:\.(\d+))?(?:$|-)")
_GPT6 = re.compile(r"^gpt-6")
# o3 and o4-mini take no `stop` (o3-mini does).
_NO_STOP = re.compile(r"^(?:o3(?!-mini)|o4-mini)(?:$|-)")

_EFFORT_ORDER = ["none", "minimal", "low", "medium", "high", "xhigh", "max"]
_O_EFFORTS = {"low", "medium", "high"}
_GPT5_0_EFFORTS = {"minimal", "low", "medium", "high"}
_GPT5_1_EFFORTS = {"none", "low", "medium", "high"}
_GPT5_2_EFFORTS = {"none", "low", "medium", "high", "xhigh"}
_GPT6_EFFORTS = _GPT5_2_EFFORTS | {"max"}

_SAMPLING = ("temperature", "top_p")
_PENALTIES = ("presence_penalty", "frequency_penalty", "logit_bias")
_LOGPROBS = ("logprobs", "top_logprobs")

# In-band stream errors carry no HTTP status: classify by type/code.
_KIND_BY_TYPE = {"invalid_request_error": "bad_request", "authentication_error": "auth",
                 "insufficient_quota": "auth", "permission_error": "auth",
                 "not_found_error": "not_found", "model_not_found": "not_found",
                 "rate_limit_error": "rate_limited", "rate_limit_exceeded": "rate_limited",
                 "server_is_overloaded": "overloaded", "service_unavailable_error": "overloaded",
                 "slow_down": "overloaded", "server_error": "server", "timeout": "timeout"}


def _family(model: str) -> tuple[str, int | None]:
    """("classic" | "chat_latest" | "o" | "gpt5" | "gpt6", gpt-5 minor version)."""
    name = model.lower().removeprefix("ft:").split("/")[-1]
    if _O_SERIES.match(name):
        return "o", None
    match = _GPT5.match(name)
    if match:
        if name.endswith("chat-latest"):
            return "chat_latest", None
        return "gpt5", int(match.group(1) or 0)
    if _GPT6.match(name):
        return "gpt6", None
    return "classic", None


def _clamp_effort(effort: str, allowed: set[str]) -> str:
    """Nearest supported effort, searching upwards first, then downwards."""
    if effort in allowed or effort not in _EFFORT_ORDER:
        return effort
    pos = _EFFORT_ORDER.index(effort)
    for candidate in _EFFORT_ORDER[pos + 1:]:
        if candidate in allowed:
            return candidate
    for candidate in reversed(_EFFORT_ORDER[:pos]):
        if candidate in allowed:
            return candidate
    return effort


def _move_token_field(body: dict, source: str, target: str, dropped: list[str]) -> None:
    """The model family takes only `target`; the client's `source` value moves there (§5.6)."""
    if source not in body:
        return
    value = body.pop(source)
    if body.get(target) is None:
        body[target] = value
        dropped.append(f"{source}->{target}")
    else:
        dropped.append(source)


def _fix_for_family(body: dict, model: str, dropped: list[str]) -> None:
    family, minor = _family(model)
    if family == "classic":
        _move_token_field(body, "max_completion_tokens", "max_tokens", dropped)
        if body.pop("reasoning_effort", None) is not None:
            dropped.append("reasoning_effort")
        return

    _move_token_field(body, "max_tokens", "max_completion_tokens", dropped)
    if family == "chat_latest":
        return  # chat-latest models take sampling parameters

    effort = body.get("reasoning_effort")
    # 5.1+ models accept sampling and logprobs with reasoning off (OpenAI
    # "latest model parameter compatibility"; PROVIDERS.md §1.5).
    sampling_ok = (family == "gpt6" or (family == "gpt5" and minor >= 1)) and effort == "none"
    for key in _SAMPLING:
        if key in body and body[key] != 1 and not sampling_ok:
            body.pop(key)
            dropped.append(key)
    for key in _PENALTIES + (() if sampling_ok else _LOGPROBS):
        if key in body:
            body.pop(key)
            dropped.append(key)
    if "stop" in body and _NO_STOP.match(model.lower()):
        body.pop("stop")
        dropped.append("stop")

    if isinstance(effort, str):
        if family == "o":
            allowed = _O_EFFORTS
        elif family == "gpt6":
            allowed = _GPT6_EFFORTS
        elif minor == 0:
            allowed = _GPT5_0_EFFORTS
        elif minor == 1:
            allowed = _GPT5_1_EFFORTS
        else:
            allowed = _GPT5_2_EFFORTS
        clamped = _clamp_effort(effort, allowed)
        if clamped != effort:
            body["reasoning_effort"] = clamped
            dropped.append(f"reasoning_effort:{effort}->{clamped}")


def _in_band_error(error: Any) -> UpstreamError:
    error = error if isinstance(error, dict) else {"message": str(error)}
    code = error.get("code") or error.get("type")
    kind = _KIND_BY_TYPE.get(str(error.get("code")), _KIND_BY_TYPE.get(str(error.get("type")), "server"))
    return UpstreamError(kind, convert.error_message("openai", error.get("message") or str(code)),
                         upstream_code=code, param=error.get("param"))


class OpenAIProvider(Provider):
    name = "openai"
    stream_format = "sse"
    stream_end = "a finish_reason"

    def build_request(self, chat: dict, model: str, base_url: str,
                      api_key: str | None) -> UpstreamRequest:
        body = {k: v for k, v in chat.items() if v is not None}
        body["model"] = model
        dropped: list[str] = []
        _fix_for_family(body, model, dropped)
        if body.get("stream"):
            # Always ask for usage (accounting); the gateway strips the chunk if
            # the client did not ask for it (§5.6).
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = {"content-type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return UpstreamRequest(f"{base_url.rstrip('/')}/chat/completions", headers, body, dropped)

    def parse_response(self, body: dict) -> dict:
        if "error" in body and "choices" not in body:
            raise _in_band_error(body["error"])
        if not isinstance(body.get("choices"), list) or not body["choices"]:
            raise TypeError("no choices")
        choices = []
        for i, upstream in enumerate(body["choices"]):
            message = dict(upstream["message"])
            message["role"] = "assistant"
            if message.setdefault("content", None) is not None:
                expect_text(message["content"], "message.content")
            if message.get("tool_calls"):
                message["tool_calls"] = [
                    {**call, "id": call.get("id") or convert.new_tool_call_id(),
                     "type": call.get("type", "function")} for call in message["tool_calls"]]
            else:
                message.pop("tool_calls", None)
            choices.append({"index": upstream.get("index", i), "message": message,
                            "finish_reason": upstream.get("finish_reason") or "stop",
                            "logprobs": upstream.get("logprobs")})
        usage = body.get("usage") or {}
        out = {"choices": choices, "usage": {**_usage(usage), **usage}}
        for key in ("system_fingerprint", "service_tier"):
            if body.get(key) is not None:
                out[key] = body[key]
        return out

    def parse_stream_event(self, event: dict, state: StreamState) -> list[dict]:
        if event.get("error") is not None:
            raise _in_band_error(event["error"])
        if event.get("usage"):
            state.usage = {**_usage(event["usage"]), **event["usage"]}
        upstream_choices = event.get("choices") or []
        if not upstream_choices:
            return []  # the include_usage chunk, captured above
        out = []
        if not state.started:
            first = upstream_choices[0].get("delta") or {}
            state.started = True
            if first.get("role") != "assistant":
                out.append(convert.chunk({"role": "assistant", "content": ""}))
        for upstream in upstream_choices:
            delta = upstream.get("delta") or {}
            if delta.get("content") is not None:
                expect_text(delta["content"], "delta.content")
            if delta.get("role"):
                # Role chunk in the documented shape: content "" (not null), no null refusal.
                delta = {k: v for k, v in delta.items() if v is not None}
                delta.setdefault("content", "")
            finish = upstream.get("finish_reason")
            if delta.get("tool_calls"):
                state.has_tool_calls = True
            if finish:
                state.finish_reason = finish
                state.finished = True
            out.append({"choices": [{"index": upstream.get("index", 0), "delta": delta,
                                     "logprobs": upstream.get("logprobs"),
                                     "finish_reason": finish}]})
        return out

    def classify_error(self, status: int, body: Any, headers: dict[str, str]) -> UpstreamError:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {"message": error or body}
        code = error.get("code") or error.get("type")
        kind = kind_for_status(status)
        if code == "insufficient_quota":
            kind = "auth"  # billing: the operator's problem, and not retryable
        return UpstreamError(kind, convert.error_message("openai", error.get("message") or body),
                             upstream_status=status, upstream_code=code,
                             retry_after=retry_after_from(convert.lower_keys(headers)),
                             param=error.get("param"))


def _usage(usage: dict) -> dict:
    """An OpenAI usage dict with every detail field present."""
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    return usage_dict(prompt, completion, usage.get("total_tokens"),
                      cached=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
                      reasoning=(usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
