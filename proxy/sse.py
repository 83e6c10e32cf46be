"""The only place that parses or writes stream framing (SSE `data:` lines, NDJSON)."""
from typing import AsyncIterator

import orjson


async def iter_events(chunks: AsyncIterator[bytes], framing: str) -> AsyncIterator[dict]:
    """Upstream body chunks -> parsed JSON events.

    SSE: events are separated by a blank line (LF or CRLF); `data:` lines of one
    event are joined; `event:` names are ignored (the JSON carries its type);
    `[DONE]` and comments are skipped. NDJSON: one JSON object per line.
    """
    buffer = b""
    separator = b"\n" if framing == "ndjson" else b"\n\n"
    async for chunk in chunks:
        buffer += chunk
        if b"\r" in buffer:  # CRLF framing; a pair may straddle two chunks
            buffer = buffer.replace(b"\r\n", b"\n")
        while True:
            end = buffer.find(separator)
            if end < 0:
                break
            block, buffer = buffer[:end], buffer[end + len(separator):]
            event = _parse(block, framing)
            if event is not None:
                yield event
    event = _parse(buffer, framing)
    if event is not None:
        yield event


def _parse(block: bytes, framing: str) -> dict | None:
    block = block.strip()
    if not block:
        return None
    if framing == "ndjson":
        return orjson.loads(block)
    data = [line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:")]
    if not data:
        # A bare JSON body (Gemini may end a stream with an error object instead of a data line).
        return orjson.loads(block) if block.startswith(b"{") else None
    payload = b"\n".join(data)
    if payload == b"[DONE]":
        return None
    return orjson.loads(payload)


def data_line(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def named_event(name: str, payload: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
