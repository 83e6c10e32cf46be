"""Anthropic Messages adapter: OpenAI chat <-> /v1/messages (PROVIDERS.md §2, §5.1-5.3)."""
from __future__ import annotations

import base64
import re
from typing import Any

from . import convert
from .base import (ClientError, Provider, StreamState, UpstreamError, UpstreamRequest, cut_off,
                   expect_text, kind_for_status, retry_after_from, text_of, usage_dict)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
JSON_OBJECT_SUFFIX = "Respond only with a single valid JSON object."
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}

_FAMILY_4 = re.compile(r"^claude-(?:opus|sonnet|haiku)-4-(\d{1,2})(?:$|-)")
_CLAUDE_5 = re.compile(r"^claude-[a-z]+-5(?:$|-)")
_NO_THINKING = re.compile(r"^claude-(?:3-(?!7)|instant|2)")
_TOOL_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")

# Budgets for models with `thinking.type: enabled` (gateway choice, §5.1).
_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384, "xhigh": 16384,
            "max": 16384}
_ADAPTIVE_EFFORT = {"minimal": "low"}
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
           "max_tokens": "length", "model_context_window_exceeded": "length",
           "tool_use": "tool_calls", "refusal": "content_filter"}
_KIND_BY_TYPE = {"invalid_request_error": "bad_request", "authentication_error": "auth",
                 "billing_error": "auth", "permission_error": "auth",
                 "not_found_error": "not_found", "request_too_large": "too_large",
                 "rate_limit_error": "rate_limited", "overloaded_error": "overloaded",
                 "api_error": "server", "timeout_error": "timeout"}
_HANDLED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
            "stop", "n", "tools", "tool_choice", "parallel_tool_calls", "response_format",
            "reasoning_effort", "user", "stream", "stream_options"}


def _url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/v1/messages"


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
    if api_key:
        headers["x-api-key"] = api_key
    return headers


def _is_adaptive(model: str) -> bool:
    """Opus/Sonnet 4.6+, Claude 5 and Mythos take thinking.type "adaptive"."""
    match = _FAMILY_4.match(model)
    if match:
        return int(match.group(1)) >= 6 and not model.startswith("claude-haiku")
    return bool(_CLAUDE_5.match(model)) or model.startswith("claude-mythos")


def _rejects_sampling(model: str) -> bool:
    """Opus 4.7+, Claude 5 and Mythos reject any non-default temperature/top_p (§2)."""
    match = _FAMILY_4.match(model)
    if match and model.startswith("claude-opus"):
        return int(match.group(1)) >= 7
    return bool(_CLAUDE_5.match(model)) or model.startswith("claude-mythos")


def _tool_id(call_id: str) -> str:
    # Anthropic ids must match ^[a-zA-Z0-9_-]+$ (§6.11); applied to calls and results alike.
    return _TOOL_ID_CHARS.sub("_", call_id or "") or "call_0"


def _user_block(part: dict) -> dict | None:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": part["text"]} if part.get("text") else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, dict) else str(image or "")
        data_url = convert.parse_data_url(url)
        if data_url:
            media_type, data = data_url
            if media_type not in IMAGE_TYPES:
                raise ClientError(f"anthropic: image type {media_type} is not supported "
                                  "(use jpeg, png, gif or webp)", param="messages")
            return {"type": "image",
                    "source": {"type": "base64", "media_type": media_type, "data": data}}
        if url.startswith(("http://", "https://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
        raise ClientError("anthropic: image_url must be an http(s) or base64 data: URL",
                          param="messages")
    if kind == "file":
        data_url = convert.parse_data_url((part.get("file") or {}).get("file_data", ""))
        if data_url and data_url[0] == "application/pdf":
            return {"type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf",
                               "data": data_url[1]}}
        if data_url and data_url[0] == "text/plain":
            text = base64.b64decode(data_url[1]).decode("utf-8", "replace")
            return {"type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": text}}
        raise ClientError("anthropic: only PDF or plain-text files sent as file_data "
                          "data: URLs are supported", param="messages")
    if kind == "input_audio":
        raise ClientError("anthropic: audio input is not supported", param="messages")
    raise ClientError(f"anthropic: content part type {kind!r} is not supported", param="messages")


def _assistant_blocks(msg: dict) -> list[dict]:
    blocks = []
    text = text_of(msg.get("content")) or msg.get("refusal") or ""
    if text:
        blocks.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": _tool_id(call.get("id")),
                       "name": function.get("name", ""),
                       "input": convert.parse_arguments(function.get("arguments"))})
    return blocks


def _tool_result(msg: dict) -> dict:
    block = {"type": "tool_result", "tool_use_id": _tool_id(msg.get("tool_call_id"))}
    text = text_of(msg.get("content"))
    if text:
        block["content"] = text
    return block


def _messages(messages: list[dict]) -> tuple[list[str], list[dict]]:
    """OpenAI messages -> (system texts, alternating Anthropic turns)."""
    system, rest = convert.split_system(messages)
    turns: list[dict] = []
    for msg in rest:
        role = msg.get("role")
        if role == "user":
            blocks = [b for b in map(_user_block, convert.parts_of(msg.get("content"))) if b]
        elif role == "assistant":
            blocks = _assistant_blocks(msg)
            if not blocks:
                continue  # nothing to say; an empty text block would be rejected
        elif role == "tool":
            role, blocks = "user", [_tool_result(msg)]
        else:
            raise ClientError(f"anthropic: message role {role!r} is not supported",
                              param="messages")
        convert.add_turn(turns, role, "content", blocks)
    for turn in turns:
        if not turn["content"]:
            raise ClientError("anthropic: a user message has no content", param="messages")
        if turn["role"] == "user":
            # The API wants tool_result blocks at the start of the user turn (§2.2).
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": "."}]})
    if not turns:
        raise ClientError("anthropic: at least one user or assistant message is required",
                          param="messages")
    return system, turns


def _tools(chat: dict, body: dict, dropped: list[str]) -> None:
    functions, choice = convert.tools_and_choice(chat, "anthropic")
    if not functions:
        dropped.extend(k for k in ("tool_choice", "parallel_tool_calls") if chat.get(k) is not None)
        return
    tools = []
    for function in functions:
        tool = {"name": function["name"]}
        if function.get("description"):
            tool["description"] = function["description"]
        tool["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        if function.get("strict") is not None:
            tool["strict"] = function["strict"]
        tools.append(tool)
    body["tools"] = tools
    if choice in ("auto", "none", "required"):
        tool_choice = {"type": {"required": "any"}.get(choice, choice)}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        tool_choice = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    elif choice is None:
        tool_choice = None
    else:
        raise ClientError("anthropic: unsupported tool_choice", param="tool_choice")
    if chat.get("parallel_tool_calls") is False:
        if tool_choice is None:
            tool_choice = {"type": "auto"}
        if tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
    if tool_choice:
        body["tool_choice"] = tool_choice


def _may_think(chat: dict, turns: list[dict], dropped: list[str]) -> bool:
    """Thinking cannot be turned on where Anthropic would refuse it (§2.1, §6.9).

    A tool loop must send the earlier turns' thinking blocks back, which the
    OpenAI form cannot carry; and thinking allows only auto/none tool_choice.
    """
    if chat.get("reasoning_effort") in (None, "none"):
        return True
    has_tool_use = any(block.get("type") == "tool_use" for turn in turns if turn["role"] == "assistant"
                       for block in turn["content"])
    choice = chat.get("tool_choice")
    is_forced = choice == "required" or isinstance(choice, dict)
    if has_tool_use or (is_forced and chat.get("tools")):
        dropped.append("reasoning_effort (tool history or forced tool_choice: thinking off)")
        return False
    return True


def _thinking(chat: dict, model: str, body: dict, dropped: list[str]) -> bool:
    """reasoning_effort -> thinking (+ output_config.effort); True when thinking is on."""
    effort = chat.get("reasoning_effort")
    if effort is None or effort == "none":
        return False
    if _NO_THINKING.match(model):
        dropped.append("reasoning_effort")
        return False
    if _is_adaptive(model):
        body["thinking"] = {"type": "adaptive"}
        body.setdefault("output_config", {})["effort"] = _ADAPTIVE_EFFORT.get(effort, effort)
    else:
        budget = _BUDGETS.get(effort, _BUDGETS["medium"])
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        # The budget counts against max_tokens and must stay below it.
        body["max_tokens"] += budget
    return True


def _sampling(chat: dict, model: str, thinking: bool, body: dict, dropped: list[str]) -> None:
    excluded = thinking or _rejects_sampling(model)
    temperature = chat.get("temperature")
    if temperature is not None:
        if excluded:
            dropped.append("temperature")
        else:
            clamped = min(max(temperature, 0), 1)
            body["temperature"] = clamped
            if clamped != temperature:
                dropped.append(f"temperature:{temperature}->{clamped}")
    if chat.get("top_p") is not None:
        # 4.5+ models reject temperature and top_p together; keep temperature.
        if excluded or temperature is not None:
            dropped.append("top_p")
        else:
            body["top_p"] = chat["top_p"]


def _usage(usage: dict) -> dict:
    cache_read = usage.get("cache_read_input_tokens") or 0
    prompt = ((usage.get("input_tokens") or 0) + cache_read
              + (usage.get("cache_creation_input_tokens") or 0))
    thinking = (usage.get("output_tokens_details") or {}).get("thinking_tokens") or 0
    out = usage_dict(prompt, usage.get("output_tokens") or 0, cached=cache_read, reasoning=thinking)
    if usage.get("cache_creation_input_tokens"):  # priced at its own rate (proxy/prices.py)
        out["prompt_tokens_details"]["cache_write_tokens"] = usage["cache_creation_input_tokens"]
    return out


def _error_from(error: Any, status: int | None = None, headers: dict | None = None) -> UpstreamError:
    error = error if isinstance(error, dict) else {"message": error}
    etype = error.get("type")
    kind = kind_for_status(status) if status else _KIND_BY_TYPE.get(etype, "server")
    return UpstreamError(kind, convert.error_message("anthropic", error.get("message") or etype),
                         upstream_status=status, upstream_code=etype,
                         retry_after=retry_after_from(convert.lower_keys(headers)))


class AnthropicProvider(Provider):
    name = "anthropic"
    stream_format = "sse"

    def build_request(self, chat: dict, model: str, base_url: str,
                      api_key: str | None) -> UpstreamRequest:
        if (chat.get("n") or 1) > 1:
            raise ClientError("anthropic: n > 1 is not supported", param="n")
        dropped = convert.unhandled_params(chat, _HANDLED)
        system, turns = _messages(chat.get("messages") or [])
        body: dict[str, Any] = {"model": model}
        max_tokens = chat.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = chat.get("max_tokens")
        elif chat.get("max_tokens") is not None:
            dropped.append("max_tokens")
        body["max_tokens"] = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        fmt = chat.get("response_format") or {}
        if fmt.get("type") == "json_object":
            system.append(JSON_OBJECT_SUFFIX)
        if system:
            body["system"] = "\n\n".join(system)
        body["messages"] = turns
        thinking = _may_think(chat, turns, dropped) and _thinking(chat, model, body, dropped)
        _sampling(chat, model, thinking, body, dropped)
        stop = convert.stop_list(chat.get("stop"))
        if stop:
            body["stop_sequences"] = stop
        _tools(chat, body, dropped)
        schema = convert.json_schema_of(fmt)
        if schema is not None:
            body.setdefault("output_config", {})["format"] = {"type": "json_schema",
                                                             "schema": schema}
        if chat.get("user"):
            body["metadata"] = {"user_id": chat["user"]}
        if chat.get("stream"):
            body["stream"] = True
        return UpstreamRequest(_url(base_url), _headers(api_key), body, dropped)

    def build_native_request(self, body: dict, model: str, base_url: str, api_key: str | None,
                             client_headers: dict[str, str]) -> UpstreamRequest:
        # Prompt caching, thinking blocks and citations survive only this way (§5.7).
        headers = _headers(api_key)
        if client_headers.get("anthropic-beta"):
            headers["anthropic-beta"] = client_headers["anthropic-beta"]
        return UpstreamRequest(_url(base_url), headers, {**body, "model": model})

    def parse_response(self, body: dict) -> dict:
        if body.get("type") == "error":
            raise _error_from(body.get("error"))
        if not isinstance(body.get("content"), list):
            raise TypeError("content is not a list")
        text, calls = "", []
        for block in body["content"]:
            if block.get("type") == "text":
                text += block.get("text", "")
            elif block.get("type") == "tool_use":
                calls.append(convert.tool_call(block.get("id"), block.get("name", ""),
                                               convert.dump_arguments(block.get("input"))))
        finish = _FINISH.get(body.get("stop_reason"), "stop")
        return {"choices": [convert.choice(0, text, calls, finish)],
                "usage": _usage(body.get("usage") or {})}

    def parse_stream_event(self, event: dict, state: StreamState) -> list[dict]:
        kind = event.get("type")
        if kind == "error":
            raise _error_from(event.get("error"))
        if kind == "message_start":
            state.extra["usage"] = dict((event.get("message") or {}).get("usage") or {})
            state.usage = _usage(state.extra["usage"])
            return convert.start_chunks(state)
        out = convert.start_chunks(state) if kind in ("content_block_start",
                                                     "content_block_delta") else []
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                out.append(convert.chunk({"content": expect_text(block["text"], "content_block.text")}))
            elif block.get("type") == "tool_use":
                # Block indexes also count text blocks; OpenAI counts tool calls only.
                position = state.tool_count
                state.tool_index[event.get("index")] = position
                state.tool_count += 1
                state.has_tool_calls = True
                out.append(convert.tool_call_delta(position, block.get("id"),
                                                   block.get("name", ""), ""))
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                out.append(convert.chunk({"content": expect_text(delta["text"], "delta.text")}))
            elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                position = state.tool_index.get(event.get("index"))
                if position is not None:
                    out.append(convert.tool_call_delta(position, None, None,
                                                       delta["partial_json"]))
        elif kind == "message_delta":
            state.extra["message_delta"] = True
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            if stop_reason:
                state.finish_reason = _FINISH.get(stop_reason, "stop")
            state.extra.setdefault("usage", {}).update(event.get("usage") or {})
            state.usage = _usage(state.extra["usage"])
        elif kind == "message_stop":
            out.extend(convert.start_chunks(state))
            state.finished = True
            state.finish_reason = state.finish_reason or "stop"
            out.append(convert.chunk({}, state.finish_reason))
        return out

    def finish_stream(self, state: StreamState) -> list[dict]:
        if state.finished:
            return []
        if not state.extra.get("message_delta"):
            # Cut before the stop reason: the answer may be incomplete (§5.3).
            raise cut_off(self.name, "the stream ended before message_delta")
        state.finished = True
        state.finish_reason = state.finish_reason or "stop"
        return [convert.chunk({}, state.finish_reason)]

    def classify_error(self, status: int, body: Any, headers: dict[str, str]) -> UpstreamError:
        error = body.get("error") if isinstance(body, dict) else None
        return _error_from(error if error is not None else body, status, headers)
