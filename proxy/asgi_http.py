"""Just enough HTTP over raw ASGI for the proxy's hot path (no Django request cycle)."""
import asyncio
from dataclasses import dataclass

from .providers.base import ClientError


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: tuple | None = None


async def read_request(scope, receive, limit: int, timeout: float) -> Request:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ClientError(f"Request body is {int(declared):,} bytes; the limit is {limit:,} bytes. "
                          "Send a smaller request (for example fewer or smaller images).",
                          status=413, code="request_too_large")
    try:
        async with asyncio.timeout(timeout):  # a body that trickles or never comes holds nothing for good
            chunks = await _read_body(receive, limit)
    except TimeoutError:
        raise ClientError(f"The request body did not arrive within {timeout:g} s.", status=408,
                          code="request_timeout") from None
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return Request(scope["method"], scope["path"], headers, body, scope.get("client"))


async def _read_body(receive, limit: int) -> list[bytes]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client went away while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ClientError(f"Request body exceeds the limit of {limit:,} bytes.",
                              status=413, code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks


def encode_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]


async def send_response(send, status: int, body: bytes, headers: dict[str, str],
                        content_type: str = "application/json"):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(body)).encode()),
                            *encode_headers(headers)]})
    await send({"type": "http.response.body", "body": body})


async def start_stream(send, headers: dict[str, str]):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"),
                            *encode_headers(headers)]})
