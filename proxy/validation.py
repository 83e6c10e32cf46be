"""Checks an OpenAI Chat Completions request body before anything else touches it."""
import orjson

from .providers.base import ClientError

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# field -> (accepted types, description for the message)
_TYPES = {
    "stream": ((bool,), "a boolean"),
    "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"),
    "max_tokens": ((int,), "a positive integer"),
    "max_completion_tokens": ((int,), "a positive integer"),
    "n": ((int,), "a positive integer"),
    "stop": ((str, list), "a string or a list of strings"),
    "tools": ((list,), "a list"),
    "tool_choice": ((str, dict), "a string or an object"),
    "stream_options": ((dict,), "an object"),
    "response_format": ((dict,), "an object"),
    "presence_penalty": ((int, float), "a number"),
    "frequency_penalty": ((int, float), "a number"),
    "seed": ((int,), "an integer"),
    "user": ((str,), "a string"),
    "parallel_tool_calls": ((bool,), "a boolean"),
}


def parse_json_object(raw: bytes) -> dict:
    if not raw.strip():
        raise ClientError("The request body is empty. Send a JSON object with 'model' and 'messages'.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ClientError(f"The request body is not valid JSON ({exc}). Send a JSON object "
                          "with 'model' and 'messages'.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ClientError(f"The request body must be a JSON object, not {type(body).__name__}.",
                          code="invalid_json")
    return body


def parse_chat(raw: bytes) -> dict:
    body = parse_json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ClientError("'model' is required and must be a non-empty string.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ClientError("'messages' is required and must be a non-empty list of messages.",
                          param="messages")
    for i, message in enumerate(messages):
        check_message(i, message)
    for name, (types, description) in _TYPES.items():
        value = body.get(name)
        # bool is an int in Python; a boolean where a number is expected is wrong.
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise ClientError(f"'{name}' must be {description}, got {type(value).__name__}.", param=name)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        if body.get(name) is not None and body[name] < 1:
            raise ClientError(f"'{name}' must be at least 1.", param=name)
    return body


def check_message(i: int, message) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise ClientError(f"{where} must be an object with 'role' and 'content'.", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise ClientError(f"{where}.role must be one of {', '.join(sorted(ROLES))}; got {role!r}.",
                          param=f"{where}.role")
    content = message.get("content")
    if content is None:
        if role != "assistant":  # an assistant turn may be only tool calls (or empty)
            raise ClientError(f"{where}.content is required for role '{role}'.", param=f"{where}.content")
    elif not isinstance(content, (str, list)):
        raise ClientError(f"{where}.content must be a string or a list of content parts.",
                          param=f"{where}.content")
    elif isinstance(content, list) and not all(isinstance(p, dict) and "type" in p for p in content):
        raise ClientError(f"{where}.content parts must be objects with a 'type'.", param=f"{where}.content")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise ClientError(f"{where}.tool_call_id is required for tool messages.", param=f"{where}.tool_call_id")
