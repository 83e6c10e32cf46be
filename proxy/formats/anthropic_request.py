"""Anthropic Messages requests on `POST /v1/messages`: the shallow check a native Anthropic
upstream needs, and the full translation to the internal OpenAI form for any other (PROVIDERS.md §5.7)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from proxy.providers.base import ClientError
from proxy.routing import check_model_name

_MAX_STOP = 4  # OpenAI takes at most four stop strings (§1.1).
_ROLES = ("user", "assistant")
# thinking.budget_tokens -> reasoning_effort (gateway choice, §5.7).
_EFFORT_BY_BUDGET = ((4096, "low"), (16384, "medium"))
# Tool types Anthropic runs itself, and those it defines for the client to run (coding
# agents send them); neither is a function another provider could be given.
_SERVER_TOOLS = ("web_search_", "web_fetch_", "code_execution_", "tool_search_tool_", "mcp_toolset")
_ANTHROPIC_TOOLS = ("bash_", "text_editor_", "computer_", "memory_")


def shallow_request(body: dict) -> dict:
    """What routing and the trace need of a request Anthropic may serve as it is.

    Anthropic itself judges the rest (server tools, url documents, max_tokens 0 ...);
    only a request translated for another provider is checked in full.
    """
    model = check_model_name(body.get("model"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ClientError("messages: a non-empty list is required.", param="messages")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ClientError("stream: a boolean is expected.", param="stream")
    system = body.get("system")
    # The trace's prompt: the messages as the client sent them, its system prompt first.
    prompt = [{"role": "system", "content": system}, *messages] if system else messages
    return {"model": model, "messages": prompt, "stream": stream is True}


def validate_and_convert(body: Any, target: str = "another provider") -> dict:
    """Anthropic Messages request body -> OpenAI Chat Completions request (internal form).

    Raises ClientError (400) naming the offending field, and for what cannot be
    translated, the provider (`target`) it cannot be sent to. `model` stays the client's string.
    """
    if not isinstance(body, dict):
        raise ClientError("The request body must be a JSON object.")
    model = check_model_name(body.get("model"))
    max_tokens = body.get("max_tokens")
    if not is_int(max_tokens) or max_tokens < 1:
        raise ClientError("max_tokens: a positive integer is required.", param="max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ClientError("messages: a non-empty list is required.", param="messages")

    out: list[dict] = []
    system = _system_text(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(messages):
        out.extend(_convert_message(message, f"messages.{i}", target))

    chat: dict[str, Any] = {"model": model, "messages": out, "max_tokens": max_tokens}
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise ClientError("stop_sequences: a list of strings is expected.",
                              param="stop_sequences")
        if stop:
            chat["stop"] = stop[:_MAX_STOP]
    for name in ("temperature", "top_p", "top_k"):
        value = body.get(name)
        if value is not None and not _is_number(value):
            raise ClientError(f"{name}: a number is expected.", param=name)
        if value is not None and name != "top_k":  # top_k has no OpenAI equivalent: dropped (§5.7)
            chat[name] = value
    tools = _convert_tools(body.get("tools"), target)
    if tools:
        chat["tools"] = tools
        chat.update(_convert_tool_choice(body.get("tool_choice")))
    effort = _reasoning_effort(body.get("thinking"), body.get("output_config"))
    if effort:
        chat["reasoning_effort"] = effort
    response_format = _response_format(body.get("output_config"))
    if response_format:
        chat["response_format"] = response_format
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ClientError("metadata: an object is expected.", param="metadata")
    if isinstance((metadata or {}).get("user_id"), str):
        chat["user"] = metadata["user_id"]
    if body.get("stream") not in (None, True, False):
        raise ClientError("stream: a boolean is expected.", param="stream")
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _system_text(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise ClientError("system: a string or a list of text blocks is expected.", param="system")
    texts = []
    for block in system:
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise ClientError("system: only text blocks (with a string 'text') are allowed.", param="system")
        if block["text"]:
            texts.append(block["text"])
    return "\n\n".join(texts)


def _blocks(message: Any, where: str) -> tuple[str, list[dict]]:
    """Check one message's shape; return its role and content as a block list."""
    if not isinstance(message, dict):
        raise ClientError(f"{where}: each message must be an object.", param=where)
    role = message.get("role")
    if role not in _ROLES:
        raise ClientError(f"{where}.role: must be 'user' or 'assistant', got {role!r}.",
                          param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, str):
        return role, [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) and isinstance(
            b.get("type"), str) for b in content):
        raise ClientError(f"{where}.content: a string or a list of content blocks "
                          "(objects with a 'type') is expected.", param=f"{where}.content")
    return role, content


def _convert_message(message: Any, where: str, target: str) -> list[dict]:
    role, blocks = _blocks(message, where)
    if role == "assistant":
        return _assistant_message(blocks, where, target)
    if isinstance(message["content"], str) and message["content"]:
        return [{"role": "user", "content": message["content"]}]

    tool_messages: list[dict] = []
    result_parts: list[dict] = []  # images returned by tools go in the following user message
    parts: list[dict] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        if block["type"] == "tool_result":
            tool_message, images = _tool_result(block, at, target)
            tool_messages.append(tool_message)
            result_parts.extend(images)
        else:
            part = _user_part(block, at, target)
            if part:
                parts.append(part)
    # OpenAI wants tool messages right after the assistant turn that made the calls,
    # so they go first whatever their position in the Anthropic turn (§5.7).
    out = tool_messages
    if result_parts or parts:
        out.append({"role": "user", "content": result_parts + parts})
    if not out:
        raise ClientError(f"{where}.content: the user message is empty.",
                          param=f"{where}.content")
    return out


def _user_part(block: dict, at: str, target: str) -> dict | None:
    kind = block["type"]
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise ClientError(f"{at}.text: a string is expected.", param=f"{at}.text")
        return {"type": "text", "text": text} if text else None
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if kind == "image":
        if source.get("type") == "base64" and _strings(source, "media_type", "data"):
            url = f"data:{source['media_type']};base64,{source['data']}"
        elif source.get("type") == "url" and _strings(source, "url"):
            url = source["url"]
        else:
            raise ClientError(f"{at}.source: images need a base64 (media_type, data) or url "
                              f"source to be sent to {target}.", param=f"{at}.source")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "document":
        return _document_part(block, source, at, target)
    if kind in ("thinking", "redacted_thinking"):
        return None
    raise ClientError(f"{at}: content block type {_shown(kind)} cannot be sent to {target} "
                      "in a user message.", param=f"{at}.type")


def _document_part(block: dict, source: dict, at: str, target: str) -> dict | None:
    title = block.get("title")
    if title is not None and not isinstance(title, str):
        raise ClientError(f"{at}.title: a string is expected.", param=f"{at}.title")
    if source.get("type") == "base64" and _strings(source, "data"):
        media_type = source.get("media_type") or "application/pdf"
        if not isinstance(media_type, str):
            raise ClientError(f"{at}.source.media_type: a string is expected.", param=f"{at}.source")
        return {"type": "file", "file": {
            "file_data": f"data:{media_type};base64,{source['data']}",
            "filename": title or "document.pdf"}}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]} if source["data"] else None
    if source.get("type") == "content" and isinstance(source.get("content"), (str, list)):
        text = _result_text(source["content"], f"{at}.source.content")
        return {"type": "text", "text": text} if text else None
    raise ClientError(f"{at}.source: documents need a base64, text or content source to be sent "
                      f"to {target} (url and file sources work only with Anthropic).", param=f"{at}.source")


def _strings(obj: dict, *names: str) -> bool:
    """Each field is a non-empty string."""
    return all(isinstance(obj.get(name), str) and obj[name] for name in names)


def _shown(value: Any) -> str:
    return repr(value)[:60]


def _result_text(content: Any, at: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for k, b in enumerate(content):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise ClientError(f"{at}.{k}: a content block (an object with a 'type') is expected.",
                              param=f"{at}.{k}")
        if b["type"] == "text":
            if not isinstance(b.get("text"), str):
                raise ClientError(f"{at}.{k}.text: a string is expected.", param=f"{at}.{k}.text")
            if b["text"]:
                texts.append(b["text"])
    return "\n".join(texts)


def _tool_result(block: dict, at: str, target: str) -> tuple[dict, list[dict]]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise ClientError(f"{at}.tool_use_id: a string is required.", param=f"{at}.tool_use_id")
    content = block.get("content")
    if content is None:
        content = ""
    if not isinstance(content, (str, list)):
        raise ClientError(f"{at}.content: a string or a list of blocks is expected.",
                          param=f"{at}.content")
    text = _result_text(content, f"{at}.content")
    images = [] if isinstance(content, str) else [
        _user_part(b, f"{at}.content.{k}", target) for k, b in enumerate(content) if b["type"] == "image"]
    if block.get("is_error"):
        text = "Error: " + text if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, [i for i in images if i]


def _assistant_message(blocks: list[dict], where: str, target: str) -> list[dict]:
    texts: list[str] = []
    calls: list[dict] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content.{j}"
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise ClientError(f"{at}.text: a string is expected.", param=f"{at}.text")
            texts.append(block["text"])
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise ClientError(f"{at}: tool_use blocks need an id and a name.", param=at)
            if not isinstance(block.get("input", {}), dict):
                raise ClientError(f"{at}.input: an object is expected.", param=f"{at}.input")
            calls.append({"id": block["id"], "type": "function", "function": {
                "name": block["name"],
                "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False)}})
        elif kind not in ("thinking", "redacted_thinking"):
            raise ClientError(f"{at}: content block type {_shown(kind)} cannot be sent to {target} "
                              "in an assistant message.", param=f"{at}.type")
    text = "".join(texts)
    if not text and not calls:
        return []  # e.g. a turn of thinking blocks only: nothing an OpenAI model can use
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _convert_tools(tools: Any, target: str) -> list[dict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ClientError("tools: a list is expected.", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise ClientError(f"tools.{i}: an object is expected.", param=f"tools.{i}")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise ClientError(f"tools.{i}: tool type {_shown(kind)} is {_tool_kind(kind)} and cannot be sent "
                              f"to {target}; define a client tool with name and input_schema.",
                              param=f"tools.{i}.type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise ClientError(f"tools.{i}.name: a string is required.", param=f"tools.{i}.name")
        for name, types, what in (("description", str, "a string"), ("input_schema", dict, "an object")):
            if tool.get(name) is not None and not isinstance(tool[name], types):
                raise ClientError(f"tools.{i}.{name}: {what} is expected.", param=f"tools.{i}.{name}")
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def _tool_kind(kind: Any) -> str:
    if isinstance(kind, str) and kind.startswith(_SERVER_TOOLS):
        return "an Anthropic server tool"
    if isinstance(kind, str) and kind.startswith(_ANTHROPIC_TOOLS):
        return "an Anthropic-defined tool"
    return "not a client tool"


def _convert_tool_choice(choice: Any) -> dict:
    if choice is None:
        return {}
    if not isinstance(choice, dict):
        raise ClientError("tool_choice: an object is expected.", param="tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        out: dict[str, Any] = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise ClientError("tool_choice: type must be auto, any, none or tool (with a name).",
                          param="tool_choice")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _reasoning_effort(thinking: Any, output_config: Any) -> str | None:
    if not isinstance(thinking, dict):
        return None
    if thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        budget = budget if is_int(budget) else 0
        for limit, effort in _EFFORT_BY_BUDGET:
            if budget < limit:
                return effort
        return "high"
    if thinking.get("type") == "adaptive":
        effort = output_config.get("effort") if isinstance(output_config, dict) else None
        return effort if isinstance(effort, str) and effort else "medium"
    return None


def _response_format(output_config: Any) -> dict | None:
    if not isinstance(output_config, dict) or output_config.get("format") is None:
        return None
    fmt = output_config["format"]
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(
            fmt.get("schema"), dict):
        raise ClientError("output_config.format: only {'type': 'json_schema', 'schema': {...}} "
                          "is supported.", param="output_config.format")
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt["schema"]}}


@dataclass(frozen=True)
class NativeBody:
    """An Anthropic client's own body: sent as it is when Anthropic serves the request,
    translated (and checked in full) only when another provider does."""

    body: dict

    def translate(self, target: str) -> dict:
        return validate_and_convert(self.body, target)
