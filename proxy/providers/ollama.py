"""Ollama adapter: OpenAI chat <-> native /api/chat with NDJSON streaming (PROVIDERS.md §4.1, §5.5)."""
from __future__ import annotations

from typing import Any

from . import convert
from .base import (ClientError, Provider, StreamState, UpstreamError, UpstreamRequest, expect_text,
                   kind_for_status, retry_after_from, text_of, usage_dict)

_THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
          "xhigh": "high", "max": "max"}
# OpenAI name -> options name, copied unchanged.
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
_HANDLED = set(_OPTIONS) | {"model", "messages", "max_tokens", "max_completion_tokens", "stop",
                            "n", "tools", "response_format", "reasoning_effort", "stream",
                            "stream_options"}


def _user_message(role: str, content: Any) -> dict:
    texts, images = [], []
    for part in convert.parts_of(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            texts.append(part.get("text") or part.get("refusal") or "")
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            data_url = convert.parse_data_url(url)
            if not data_url:
                # Fetching URLs is not an adapter's job (no network calls here).
                raise ClientError("ollama: image URLs are not supported; send the image as a "
                                  "data: URL", param="messages")
            images.append(data_url[1])  # Ollama wants raw base64, no data: prefix
        else:
            raise ClientError(f"ollama: content part type {kind!r} is not supported",
                              param="messages")
    message: dict[str, Any] = {"role": role, "content": "".join(texts)}
    if images:
        message["images"] = images
    return message


def _messages(messages: list[dict]) -> list[dict]:
    names = convert.tool_names_by_id(messages)
    out = []
    for msg in messages:
        role = msg.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": text_of(msg.get("content"))})
        elif role == "user":
            out.append(_user_message("user", msg.get("content")))
        elif role == "assistant":
            message = _user_message("assistant", msg.get("content"))
            if msg.get("tool_calls"):
                message["tool_calls"] = [
                    {"function": {"name": (c.get("function") or {}).get("name", ""),
                                  "arguments": convert.parse_arguments(
                                      (c.get("function") or {}).get("arguments"))}}
                    for c in msg["tool_calls"]]
            out.append(message)
        elif role == "tool":
            message = {"role": "tool", "content": text_of(msg.get("content"))}
            call_id = msg.get("tool_call_id")
            if names.get(call_id):
                message["tool_name"] = names[call_id]
            if call_id:
                message["tool_call_id"] = call_id
            out.append(message)
        else:
            raise ClientError(f"ollama: message role {role!r} is not supported", param="messages")
    return out


def _options(chat: dict) -> dict:
    return convert.sampling(chat, _OPTIONS, "num_predict", "stop")


def _tool_calls(message: dict) -> list[dict]:
    return [convert.tool_call(call.get("id"), (call.get("function") or {}).get("name", ""),
                              convert.dump_arguments((call.get("function") or {}).get("arguments")))
            for call in message.get("tool_calls") or []]


def _finish_reason(body: dict, has_calls: bool) -> str:
    # done_reason stays "stop" when tools were called (§4.1).
    if has_calls:
        return "tool_calls"
    return "length" if body.get("done_reason") == "length" else "stop"


def _usage(body: dict) -> dict:
    return usage_dict(body.get("prompt_eval_count") or 0, body.get("eval_count") or 0)


class OllamaProvider(Provider):
    name = "ollama"
    stream_format = "ndjson"
    stream_end = '"done": true'

    def build_request(self, chat: dict, model: str, base_url: str,
                      api_key: str | None) -> UpstreamRequest:
        if (chat.get("n") or 1) > 1:
            raise ClientError("ollama: n > 1 is not supported", param="n")
        dropped = convert.unhandled_params(chat, _HANDLED)
        body: dict[str, Any] = {"model": model, "messages": _messages(chat.get("messages") or [])}
        functions = convert.function_tools(chat.get("tools"), "ollama")
        if functions:
            body["tools"] = [{"type": "function", "function": f} for f in functions]
        fmt = chat.get("response_format") or {}
        if fmt.get("type") == "json_object":
            body["format"] = "json"
        elif fmt.get("type") == "json_schema":
            body["format"] = convert.json_schema_of(fmt)
        options = _options(chat)
        if options:
            body["options"] = options
        effort = chat.get("reasoning_effort")
        if effort is not None:
            body["think"] = _THINK.get(effort, "medium")
        # Ollama streams unless told otherwise, so always say which (§4.1).
        body["stream"] = bool(chat.get("stream"))
        headers = {"content-type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return UpstreamRequest(f"{base_url.rstrip('/')}/api/chat", headers, body, dropped)

    def parse_response(self, body: dict) -> dict:
        if "error" in body:
            raise self.classify_error(500, body, {})
        message = body["message"]
        calls = _tool_calls(message)
        choice = convert.choice(0, expect_text(message.get("content", ""), "message.content"), calls,
                                _finish_reason(body, bool(calls)))
        return {"choices": [choice], "usage": _usage(body)}

    def parse_stream_event(self, event: dict, state: StreamState) -> list[dict]:
        if "error" in event:
            # An error line arrives with HTTP 200 already sent (§4.1).
            raise UpstreamError("server", convert.error_message("ollama", event["error"]),
                                upstream_status=200)
        out = convert.start_chunks(state)
        message = event.get("message") or {}
        if message.get("content"):
            out.append(convert.chunk({"content": expect_text(message["content"], "message.content")}))
        for call in _tool_calls(message):
            function = call["function"]
            out.append(convert.whole_tool_call_chunk(state, call["id"], function["name"],
                                                     function["arguments"]))
        if event.get("done"):
            state.usage = _usage(event)
            state.finish_reason = _finish_reason(event, state.has_tool_calls)
            state.finished = True
            out.append(convert.chunk({}, state.finish_reason))
        return out

    def classify_error(self, status: int, body: Any, headers: dict[str, str]) -> UpstreamError:
        message = body.get("error") if isinstance(body, dict) else body
        if isinstance(message, dict):  # the OpenAI-compatible endpoint's shape
            message = message.get("message")
        kind = kind_for_status(status)
        if status in (502, 503):
            kind = "overloaded"  # model runner busy or cloud model unreachable (§5.8)
        return UpstreamError(kind, convert.error_message("ollama", message or ""),
                             upstream_status=status,
                             retry_after=retry_after_from(convert.lower_keys(headers)))
