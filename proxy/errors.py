"""Error bodies in the client's format, and upstream failures mapped to gateway statuses."""
import orjson

from .providers.base import ClientError, UpstreamError

# PROVIDERS.md §5.8: upstream failure kind -> (status, type, code) for an OpenAI client.
_OPENAI = {
    "bad_request": (400, "invalid_request_error", None),
    "auth": (502, "api_error", "upstream_auth_error"),
    "not_found": (404, "invalid_request_error", "model_not_found"),
    "too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "overloaded": (502, "api_error", "upstream_overloaded"),
    "server": (502, "api_error", "upstream_error"),
    "bad_response": (502, "api_error", "upstream_error"),
    "unavailable": (502, "api_error", "upstream_unavailable"),
    "timeout": (504, "timeout_error", "upstream_timeout"),
}


def openai_error(status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def from_client_error(err: ClientError) -> tuple[int, bytes]:
    return openai_error(err.status, err.message, err.type, err.param, err.code)


def from_upstream_error(err: UpstreamError) -> tuple[int, bytes]:
    status, type_, code = _OPENAI.get(err.kind, _OPENAI["server"])
    if err.kind == "bad_request" and err.upstream_code:
        code = err.upstream_code
    return openai_error(status, err.message, type_, err.param, code)


def openai_error_for(err: Exception) -> tuple[int, bytes]:
    """Any failure -> (status, OpenAI error body); anything unforeseen is an internal error."""
    if isinstance(err, UpstreamError):
        return from_upstream_error(err)
    if isinstance(err, ClientError):
        return from_client_error(err)
    return openai_error(500, str(err) or "Internal gateway error.", "api_error", code="internal_error")


def openai_stream_error(err: Exception) -> bytes:
    """The in-band error line for a stream whose 200 status line already went out."""
    return b"data: " + openai_error_for(err)[1] + b"\n\n"
