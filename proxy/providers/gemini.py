"""Gemini adapter: OpenAI chat <-> generateContent / streamGenerateContent (PROVIDERS.md §3, §5.4)."""
from __future__ import annotations

import json
import math
import re
from typing import Any

from . import convert
from .base import (ClientError, cut_off, Provider, StreamState, UpstreamError, UpstreamRequest,
                   kind_for_status, retry_after_from, text_of, usage_dict)

_VERSION = re.compile(r"^gemini-(\d+)(?:\.(\d+))?")
# Documented fallback when the thought signature of a replayed call is unknown (§3.1, §6.9):
# the gateway keeps no signature cache, so Gemini 3 history always carries this value.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576,
            "xhigh": 24576, "max": 24576}
_LEVELS = {"none": "MINIMAL", "minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM",
           "high": "HIGH", "xhigh": "HIGH", "max": "HIGH"}
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
_LENGTH = {"MAX_TOKENS", "CONTINUATION"}
_FILTERED = {"SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
             "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR"}
_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# OpenAI name -> generationConfig name, copied unchanged.
_GENERATION = {"temperature": "temperature", "top_p": "topP", "n": "candidateCount",
               "seed": "seed", "presence_penalty": "presencePenalty",
               "frequency_penalty": "frequencyPenalty"}
_HANDLED = set(_GENERATION) | {"model", "messages", "max_tokens", "max_completion_tokens",
                               "stop", "tools", "tool_choice", "response_format",
                               "reasoning_effort", "stream", "stream_options"}


def _version(model: str) -> tuple[int, int] | None:
    match = _VERSION.match(model)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def _inline(mime_type: str, data: str) -> dict:
    return {"inlineData": {"mimeType": mime_type, "data": data}}


def _user_part(part: dict) -> dict | None:
    kind = part.get("type")
    if kind == "text":
        return {"text": part["text"]} if part.get("text") else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, dict) else str(image or "")
        data_url = convert.parse_data_url(url)
        if data_url:
            return _inline(*data_url)
        # Fetching URLs is not an adapter's job (no network calls here).
        raise ClientError("gemini: image URLs are not supported; send the image as a data: URL",
                          param="messages")
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        mime_type = _AUDIO_TYPES.get(audio.get("format"))
        if not mime_type:
            raise ClientError("gemini: input_audio format must be wav or mp3", param="messages")
        return _inline(mime_type, audio.get("data", ""))
    if kind == "file":
        data_url = convert.parse_data_url((part.get("file") or {}).get("file_data", ""))
        if not data_url:
            raise ClientError("gemini: files must be sent as file_data data: URLs",
                              param="messages")
        return _inline(*data_url)
    raise ClientError(f"gemini: content part type {kind!r} is not supported", param="messages")


def _function_response(msg: dict, names: dict[str, str]) -> dict:
    name = names.get(msg.get("tool_call_id"))
    if not name:
        raise ClientError(f"gemini: tool message {msg.get('tool_call_id')!r} does not answer "
                          "any earlier tool call", param="messages")
    text = text_of(msg.get("content"))
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    response = value if isinstance(value, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


def _contents(messages: list[dict], model: str) -> tuple[list[str], list[dict]]:
    """OpenAI messages -> (system texts, merged user/model contents)."""
    names = convert.tool_names_by_id(messages)
    system, rest = convert.split_system(messages)
    contents: list[dict] = []
    for msg in rest:
        role = msg.get("role")
        if role == "user":
            parts = [p for p in map(_user_part, convert.parts_of(msg.get("content"))) if p]
        elif role == "assistant":
            role = "model"
            text = text_of(msg.get("content"))
            parts = [{"text": text}] if text else []
            for call in msg.get("tool_calls") or []:
                function = call.get("function") or {}
                parts.append({"functionCall": {
                    "name": function.get("name", ""),
                    "args": convert.parse_arguments(function.get("arguments"))}})
        elif role == "tool":
            role, parts = "user", [_function_response(msg, names)]
        else:
            raise ClientError(f"gemini: message role {role!r} is not supported", param="messages")
        if parts:
            convert.add_turn(contents, role, "parts", parts)
    if not contents:
        raise ClientError("gemini: at least one user message with content is required",
                          param="messages")
    if (_version(model) or (0, 0)) >= (3, 0):
        for content in contents:
            calls = [p for p in content["parts"] if "functionCall" in p]
            if content["role"] == "model" and calls:
                calls[0]["thoughtSignature"] = SKIP_SIGNATURE  # only the first of parallel calls
    return system, contents


def _tools(chat: dict, body: dict, dropped: list[str]) -> None:
    functions, choice = convert.tools_and_choice(chat, "gemini")
    if not functions:
        if choice is not None:
            dropped.append("tool_choice")
        return
    declarations = []
    for function in functions:
        declaration = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        if function.get("parameters"):
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    body["tools"] = [{"functionDeclarations": declarations}]
    if isinstance(choice, str) and choice in _CHOICE_MODES:
        body["toolConfig"] = {"functionCallingConfig": {"mode": _CHOICE_MODES[choice]}}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        body["toolConfig"] = {"functionCallingConfig": {"mode": "ANY",
                                                        "allowedFunctionNames": [name]}}
    elif choice is not None:
        raise ClientError("gemini: unsupported tool_choice", param="tool_choice")


def _thinking(effort: str, model: str, dropped: list[str]) -> dict | None:
    version = _version(model)
    if version and version >= (3, 0):
        level = _LEVELS.get(effort, "MEDIUM")
        if level == "MINIMAL" and "pro" in model:
            level = "LOW"  # Pro models cannot switch thinking off
        return {"thinkingLevel": level}
    if version == (2, 5):
        if effort == "none" and "pro" in model:
            dropped.append("reasoning_effort")  # 2.5 Pro cannot disable thinking
            return None
        return {"thinkingBudget": _BUDGETS.get(effort, _BUDGETS["medium"])}
    dropped.append("reasoning_effort")
    return None


def _generation_config(chat: dict, model: str, dropped: list[str]) -> dict:
    config: dict[str, Any] = convert.sampling(chat, _GENERATION, "maxOutputTokens", "stopSequences")
    fmt = chat.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = convert.json_schema_of(fmt)
        if schema is not None:
            config["responseJsonSchema"] = schema
    if chat.get("reasoning_effort") is not None:
        thinking = _thinking(chat["reasoning_effort"], model, dropped)
        if thinking:
            config["thinkingConfig"] = thinking
    return config


def _finish_reason(reason: str | None, has_calls: bool) -> str:
    if reason in _LENGTH:
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def _usage(meta: dict) -> dict:
    thoughts = meta.get("thoughtsTokenCount") or 0
    return usage_dict((meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0),
                      (meta.get("candidatesTokenCount") or 0) + thoughts,
                      meta.get("totalTokenCount"),
                      cached=meta.get("cachedContentTokenCount") or 0, reasoning=thoughts)


def _parts(candidate: dict) -> tuple[str, list[dict]]:
    """(visible text, functionCall objects) of a candidate; thought parts are skipped."""
    text, calls = "", []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if "functionCall" in part:
            calls.append(part["functionCall"])
        elif "text" in part and not part.get("thought"):
            text += part["text"]
    return text, calls


def _retry_delay(error: dict) -> int | None:
    for detail in error.get("details") or []:
        delay = str(detail.get("retryDelay") or "")
        if delay.endswith("s"):
            try:
                return math.ceil(float(delay[:-1]))
            except ValueError:
                pass
    return None


class GeminiProvider(Provider):
    name = "gemini"
    stream_format = "sse"
    stream_end = "a finishReason"

    def build_request(self, chat: dict, model: str, base_url: str,
                      api_key: str | None) -> UpstreamRequest:
        model = model.removeprefix("models/")
        dropped = convert.unhandled_params(chat, _HANDLED)
        system, contents = _contents(chat.get("messages") or [], model)
        body: dict[str, Any] = {}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        body["contents"] = contents
        _tools(chat, body, dropped)
        config = _generation_config(chat, model, dropped)
        if config:
            body["generationConfig"] = config
        method = ":streamGenerateContent?alt=sse" if chat.get("stream") else ":generateContent"
        headers = {"content-type": "application/json"}
        if api_key:
            headers["x-goog-api-key"] = api_key
        url = f"{base_url.rstrip('/')}/v1beta/models/{model}{method}"
        return UpstreamRequest(url, headers, body, dropped)

    def parse_response(self, body: dict) -> dict:
        if "error" in body:
            raise self._in_band_error(body)
        choices = []
        for i, candidate in enumerate(body.get("candidates") or []):
            text, calls = _parts(candidate)
            tool_calls = [convert.tool_call(c.get("id"), c.get("name", ""),
                                            convert.dump_arguments(c.get("args")))
                          for c in calls]
            finish = _finish_reason(candidate.get("finishReason"), bool(calls))
            choices.append(convert.choice(candidate.get("index", i), text, tool_calls, finish))
        if not choices and "promptFeedback" not in body:
            raise TypeError("neither candidates nor promptFeedback")
        if not choices:
            # A blocked prompt is a 200 without candidates (§6.5).
            blocked = bool((body.get("promptFeedback") or {}).get("blockReason"))
            choices.append({"index": 0, "message": {"role": "assistant",
                                                    "content": None if blocked else ""},
                            "finish_reason": "content_filter" if blocked else "stop",
                            "logprobs": None})
        return {"choices": choices, "usage": _usage(body.get("usageMetadata") or {})}

    def parse_stream_event(self, event: dict, state: StreamState) -> list[dict]:
        if "error" in event:
            raise self._in_band_error(event)
        out = convert.start_chunks(state)
        if event.get("usageMetadata"):
            state.usage = _usage(event["usageMetadata"])
        candidates = event.get("candidates") or []
        if not candidates and (event.get("promptFeedback") or {}).get("blockReason"):
            candidates = [{"finishReason": "SAFETY"}]
        for candidate in candidates:
            index = candidate.get("index", 0)
            text, calls = _parts(candidate)
            if text:
                out.append(convert.chunk({"content": text}, index=index))
            for call in calls:
                out.append(convert.whole_tool_call_chunk(
                    state, call.get("id"), call.get("name", ""),
                    convert.dump_arguments(call.get("args")), index))
            if candidate.get("finishReason"):
                state.finish_reason = _finish_reason(candidate["finishReason"],
                                                     state.has_tool_calls)
                state.finished = True
                out.append(convert.chunk({}, state.finish_reason, index=index))
        return out

    def finish_stream(self, state: StreamState) -> list[dict]:
        # PROVIDERS.md §5.4: a body that ends without a finishReason finishes with "stop" (Gemini
        # streams always send one, so this is not the cut-stream case OpenAI and Ollama have).
        if state.finished:
            return []
        if not state.started:
            raise cut_off(self.name, "the stream ended before any data")
        state.finished = True
        state.finish_reason = state.finish_reason or "stop"
        return [convert.chunk({}, state.finish_reason)]

    def _in_band_error(self, body: dict) -> UpstreamError:
        """An error object in a 200 body or stream; its `code` is the HTTP status it stands for."""
        code = body["error"].get("code") if isinstance(body["error"], dict) else None
        return self.classify_error(code if isinstance(code, int) else 500, body, {})

    def classify_error(self, status: int, body: Any, headers: dict[str, str]) -> UpstreamError:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {"message": error or body}
        reasons = [d.get("reason") for d in error.get("details") or [] if isinstance(d, dict)]
        kind, code = kind_for_status(status), error.get("status")
        if "API_KEY_INVALID" in reasons:
            kind, code = "auth", "API_KEY_INVALID"  # a 400, but the operator's key is bad
        retry_after = retry_after_from(convert.lower_keys(headers)) or _retry_delay(error)
        return UpstreamError(kind, convert.error_message("gemini", error.get("message") or body),
                             upstream_status=status, upstream_code=code, retry_after=retry_after)
