"""Checks an OpenAI Chat Completions request body before anything else touches it.

After these checks every value an adapter reads has the type it expects, so a
translation either builds or refuses with a ClientError, never crashes.
"""
import orjson

from .providers.base import MAX_DEPTH, ClientError, check_depth
from .routing import check_model_name

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}

STRING = ((str,), "a string")
NUMBER = ((int, float), "a number")
INTEGER = ((int,), "an integer")
BOOLEAN = ((bool,), "a boolean")
OBJECT = ((dict,), "an object")
LIST = ((list,), "a list")
# field -> (accepted types, description for the message)
_TYPES = {
    "stream": BOOLEAN,
    "temperature": NUMBER,
    "top_p": NUMBER,
    "max_tokens": ((int,), "a positive integer"),
    "max_completion_tokens": ((int,), "a positive integer"),
    "n": ((int,), "a positive integer"),
    "stop": ((str, list), "a string or a list of strings"),
    "tools": LIST,
    "tool_choice": ((str, dict), "a string or an object"),
    "stream_options": OBJECT,
    "response_format": OBJECT,
    "presence_penalty": NUMBER,
    "frequency_penalty": NUMBER,
    "seed": INTEGER,
    "user": STRING,
    "parallel_tool_calls": BOOLEAN,
    "reasoning_effort": STRING,
    "logit_bias": OBJECT,
    "logprobs": BOOLEAN,
    "top_logprobs": INTEGER,
    "metadata": OBJECT,
    "store": BOOLEAN,
    "service_tier": STRING,
}
# Content part type -> its field and that field's accepted types.
_PART_FIELDS = {
    "text": ("text", (str,)),
    "refusal": ("refusal", (str,)),
    "image_url": ("image_url", (str, dict)),
    "input_audio": ("input_audio", (dict,)),
    "file": ("file", (dict,)),
}
# Strings inside those objects, when present.
_PART_STRINGS = {"image_url": ("url", "detail"), "input_audio": ("data", "format"),
                 "file": ("file_data", "file_id", "filename")}


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
    if len(raw) > 2 * MAX_DEPTH:  # deeper nesting takes an opening and a closing byte a level
        check_depth(body)
    return body


def parse_chat(raw: bytes) -> dict:
    body = parse_json_object(raw)
    check_model_name(body.get("model"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ClientError("'messages' is required and must be a non-empty list of messages.",
                          param="messages")
    for i, message in enumerate(messages):
        check_message(i, message)
    for name, value in body.items():  # a body has a few of these fields, so loop over the body
        spec = _TYPES.get(name)
        if spec is not None:
            check_type(value, *spec, name)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        if body.get(name) is not None and body[name] < 1:
            raise ClientError(f"'{name}' must be at least 1.", param=name)
    if isinstance(body.get("stop"), list):
        for i, stop in enumerate(body["stop"]):
            check_type(stop, *STRING, f"stop[{i}]")
    for i, tool in enumerate(body.get("tools") or ()):
        check_tool(i, tool)
    if isinstance(body.get("tool_choice"), dict):
        check_tool_choice(body["tool_choice"])
    if body.get("response_format") is not None:
        check_response_format(body["response_format"])
    if body.get("stream_options") is not None:
        check_type(body["stream_options"].get("include_usage"), *BOOLEAN, "stream_options.include_usage")
    return body


def check_type(value, types: tuple, description: str, where: str) -> None:
    """None passes (absent); bool is an int in Python, but a boolean where a number is expected is wrong."""
    if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        raise ClientError(f"'{where}' must be {description}, got {type(value).__name__}.", param=where)


def check_message(i: int, message) -> None:
    # Per message on every request: plain type() tests, and the field path built only for an error.
    if type(message) is not dict:
        raise ClientError(f"messages[{i}] must be an object with 'role' and 'content'.", param=f"messages[{i}]")
    role = message.get("role")
    if type(role) is not str or role not in ROLES:
        shown = role if isinstance(role, str) else type(role).__name__
        raise ClientError(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}; got {shown[:40]!r}.",
                          param=f"messages[{i}].role")
    content = message.get("content")
    if type(content) is list:
        for j, part in enumerate(content):
            check_part(part, i, j)
    elif content is None:
        if role != "assistant":  # an assistant turn may be only tool calls (or empty)
            raise ClientError(f"messages[{i}].content is required for role '{role}'.",
                              param=f"messages[{i}].content")
    elif type(content) is not str:
        raise ClientError(f"messages[{i}].content must be a string or a list of content parts.",
                          param=f"messages[{i}].content")
    for name in ("name", "refusal"):
        if message.get(name) is not None and type(message[name]) is not str:
            check_type(message[name], *STRING, f"messages[{i}].{name}")
    calls = message.get("tool_calls")
    if calls is not None:
        check_type(calls, *LIST, f"messages[{i}].tool_calls")
        for j, call in enumerate(calls):
            check_tool_call(call, i, j)
    if role == "tool" and type(message.get("tool_call_id")) is not str:
        raise ClientError(f"messages[{i}].tool_call_id is required for tool messages.",
                          param=f"messages[{i}].tool_call_id")


def check_part(part, i: int, j: int) -> None:
    if type(part) is not dict or type(part.get("type")) is not str:
        raise ClientError(f"messages[{i}].content[{j}] must be an object with a string 'type'.",
                          param=f"messages[{i}].content[{j}]")
    spec = _PART_FIELDS.get(part["type"])
    if spec is None:
        return  # a type the gateway does not know: the adapter that cannot send it refuses it
    name, types = spec
    value = part.get(name)
    where = f"messages[{i}].content[{j}].{name}"
    if not isinstance(value, types):
        raise ClientError(f"{where} is required for a '{part['type']}' part "
                          f"({' or '.join('a string' if t is str else 'an object' for t in types)}).", param=where)
    if type(value) is dict:
        for key in _PART_STRINGS[part["type"]]:
            check_type(value.get(key), *STRING, f"{where}.{key}")


def check_tool_call(call, i: int, j: int) -> None:
    if type(call) is dict:
        function = call.get("function")
        if (type(function) is dict and type(function.get("name")) is str
                and type(function.get("arguments", "")) is str
                and type(call.get("id", "")) is str and type(call.get("type", "")) is str):
            return
    # The slow path only finds what to name in the error.
    where = f"messages[{i}].tool_calls[{j}]"
    if not isinstance(call, dict):
        raise ClientError(f"{where} must be an object.", param=where)
    check_type(call.get("id"), *STRING, f"{where}.id")
    check_type(call.get("type"), *STRING, f"{where}.type")
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ClientError(f"{where}.function must be an object with a string 'name'.", param=f"{where}.function")
    check_type(function.get("arguments"), *STRING, f"{where}.function.arguments")


def check_tool(i: int, tool) -> None:
    if type(tool) is dict and tool.get("type", "function") == "function":
        function = tool.get("function")
        if (type(function) is dict and type(function.get("name")) is str and function["name"]
                and type(function.get("description", "")) is str and type(function.get("parameters", {})) is dict
                and type(function.get("strict", False)) is bool):
            return
    where = f"tools[{i}]"
    if not isinstance(tool, dict):
        raise ClientError(f"{where} must be an object.", param=where)
    check_type(tool.get("type"), *STRING, f"{where}.type")
    if tool.get("type", "function") != "function":
        return  # other tool types go to OpenAI as they are; the other adapters refuse them
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ClientError(f"{where}.function must be an object with a non-empty string 'name'.",
                          param=f"{where}.function")
    check_type(function.get("description"), *STRING, f"{where}.function.description")
    check_type(function.get("parameters"), *OBJECT, f"{where}.function.parameters")
    check_type(function.get("strict"), *BOOLEAN, f"{where}.function.strict")


def check_tool_choice(choice: dict) -> None:
    check_type(choice.get("type"), *STRING, "tool_choice.type")
    kind = choice.get("type")
    if kind == "function":
        function = choice.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ClientError("tool_choice.function must be an object with a string 'name'.",
                              param="tool_choice.function")
    elif kind == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if not isinstance(allowed, dict) or not isinstance(allowed.get("tools"), list):
            raise ClientError("tool_choice.allowed_tools must be an object with a list of tools in 'tools'.",
                              param="tool_choice.allowed_tools")
        check_type(allowed.get("mode"), *STRING, "tool_choice.allowed_tools.mode")
        for j, tool in enumerate(allowed["tools"]):
            where = f"tool_choice.allowed_tools.tools[{j}]"
            if not isinstance(tool, dict):
                raise ClientError(f"{where} must be an object.", param=where)
            check_type(tool.get("name"), *STRING, f"{where}.name")
            check_type(tool.get("function"), *OBJECT, f"{where}.function")
            check_type((tool.get("function") or {}).get("name"), *STRING, f"{where}.function.name")


def check_response_format(fmt: dict) -> None:
    check_type(fmt.get("type"), *STRING, "response_format.type")
    if fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema")
        check_type(schema, *OBJECT, "response_format.json_schema")
        check_type((schema or {}).get("schema"), *OBJECT, "response_format.json_schema.schema")
