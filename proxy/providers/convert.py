"""Translation pieces that several provider adapters share (ids, data URLs, tool calls, chunks)."""
from __future__ import annotations

import json
import logging
import re
import secrets
import string
from typing import Any

import orjson

from .base import ClientError, StreamState, check_depth, text_of

log = logging.getLogger(__name__)

_ALNUM = string.ascii_letters + string.digits
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)((?:;[\w-]+=[^;,]*)*);base64,(.*)$", re.S)
# Keys that may show up in upstream error text: OpenAI/Anthropic "sk-...", Google "AIza...",
# and anything after "Bearer".
_SECRET = re.compile(r"sk-[A-Za-z0-9_*\-]{6,}|AIza[0-9A-Za-z_\-]{10,}|(?i:bearer)\s+[^\s\"',]+")


def new_tool_call_id() -> str:
    """OpenAI-style tool call id for upstreams that return none (Gemini, Ollama)."""
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def parse_data_url(url: str) -> tuple[str, str] | None:
    """'data:image/png;base64,AAA' -> ('image/png', 'AAA'); None for anything else."""
    match = _DATA_URL.match(url or "")
    if not match:
        return None
    return match.group(1).lower(), match.group(3)


def parse_arguments(arguments: Any) -> dict:
    """OpenAI tool-call arguments (a JSON string) -> object; invalid or empty -> {} (§6.2)."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)  # stops at 1,024 levels, where json.loads hits RecursionError
    except (TypeError, ValueError):
        log.warning("tool call arguments are not valid JSON; sending {}")
        return {}
    if not isinstance(value, dict):
        return {}
    check_depth(value, "Tool call arguments")  # they go upstream as an object
    return value


def dump_arguments(value: Any) -> str:
    return json.dumps(value if value is not None else {}, ensure_ascii=False)


def split_system(messages: list[dict]) -> tuple[list[str], list[dict]]:
    """System and developer texts, hoisted in order, and the other messages."""
    system: list[str] = []
    rest: list[dict] = []
    for msg in messages:
        if msg.get("role") in ("system", "developer"):
            text = text_of(msg.get("content"))
            if text:
                system.append(text)
        else:
            rest.append(msg)
    return system, rest


def add_turn(turns: list[dict], role: str, key: str, items: list) -> None:
    """Appends a turn, merged into the previous one when the role repeats."""
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def max_tokens(chat: dict) -> int | None:
    """The client's output cap, whichever of the two OpenAI fields it used."""
    value = chat.get("max_completion_tokens")
    return chat.get("max_tokens") if value is None else value


def sampling(chat: dict, names: dict[str, str], max_tokens_name: str, stop_name: str) -> dict:
    """The client's sampling knobs, output cap and stop list under the provider's names."""
    out = {name: chat[key] for key, name in names.items() if chat.get(key) is not None}
    if max_tokens(chat) is not None:
        out[max_tokens_name] = max_tokens(chat)
    stop = stop_list(chat.get("stop"))
    if stop:
        out[stop_name] = stop
    return out


def stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    return [s for s in stop if isinstance(s, str) and s]


def parts_of(content: Any) -> list[dict]:
    """OpenAI message content (string, parts list or None) -> list of parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content if isinstance(p, dict)]


def tool_names_by_id(messages: list[dict]) -> dict[str, str]:
    """tool_call_id -> function name, from the assistant turns of the history.

    Gemini's functionResponse and Ollama's tool_name need the name, which an OpenAI
    tool message does not carry.
    """
    names = {}
    for msg in messages:
        for call in msg.get("tool_calls") or []:
            if call.get("id"):
                names[call["id"]] = (call.get("function") or {}).get("name", "")
    return names


def function_tools(tools: list[dict] | None, provider: str) -> list[dict]:
    """The `function` objects of OpenAI tools; other tool types cannot be translated."""
    out = []
    for tool in tools or []:
        if tool.get("type", "function") != "function" or "function" not in tool:
            raise ClientError(f"{provider} does not support tools of type {tool.get('type')!r}",
                              param="tools")
        out.append(tool["function"])
    return out


def tools_and_choice(chat: dict, provider: str) -> tuple[list[dict], Any]:
    """(function objects, tool_choice) with an `allowed_tools` choice resolved.

    Upstreams without allowed_tools get the tool list filtered and plain
    "auto"/"required" instead (PROVIDERS.md §5.1).
    """
    functions = function_tools(chat.get("tools"), provider)
    choice = chat.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = {(t.get("function") or {}).get("name") or t.get("name")
                 for t in allowed.get("tools") or []}
        functions = [f for f in functions if f.get("name") in names]
        choice = "required" if allowed.get("mode") == "required" else "auto"
    return functions, choice


def unhandled_params(chat: dict, handled: set[str]) -> list[str]:
    """Client parameters an adapter has no translation for (set and not null)."""
    return [k for k, v in chat.items() if k not in handled and v is not None]


def json_schema_of(response_format: Any) -> dict | None:
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema") or {}
    return None


# --- responses and stream chunks -------------------------------------------

def tool_call(call_id: str | None, name: str, arguments: str) -> dict:
    return {"id": call_id or new_tool_call_id(), "type": "function",
            "function": {"name": name, "arguments": arguments}}


def choice(index: int, text: str, tool_calls: list[dict], finish_reason: str) -> dict:
    # content is null only next to tool calls; an empty answer is "" (§6.1).
    message: dict[str, Any] = {"role": "assistant",
                               "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": None}


def chunk(delta: dict, finish_reason: str | None = None, index: int = 0) -> dict:
    return {"choices": [{"index": index, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}]}


def start_chunks(state: StreamState) -> list[dict]:
    """The role chunk, once per stream."""
    if state.started:
        return []
    state.started = True
    return [chunk({"role": "assistant", "content": ""})]


def tool_call_delta(index: int, call_id: str | None, name: str | None,
                    arguments: str) -> dict:
    """A tool_calls delta; id/name only on a call's first delta."""
    call: dict[str, Any] = {"index": index}
    if call_id is not None:
        call.update(id=call_id, type="function",
                    function={"name": name, "arguments": arguments})
    else:
        call["function"] = {"arguments": arguments}
    return chunk({"tool_calls": [call]})


def whole_tool_call_chunk(state: StreamState, call_id: str | None, name: str,
                          arguments: str, index: int = 0) -> dict:
    """One delta carrying a complete call (Gemini and Ollama deliver calls whole)."""
    position = state.tool_count
    state.tool_count += 1
    state.has_tool_calls = True
    out = tool_call_delta(position, call_id or new_tool_call_id(), name, arguments)
    out["choices"][0]["index"] = index
    return out


# --- errors ------------------------------------------------------------------

def redact(text: str) -> str:
    return _SECRET.sub("[redacted]", text)


def error_message(provider: str, text: Any) -> str:
    text = text if isinstance(text, str) else json.dumps(text)
    return f"{provider}: {redact(text.strip()) or 'upstream error'}"[:2000]


def lower_keys(headers: dict[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items()}
