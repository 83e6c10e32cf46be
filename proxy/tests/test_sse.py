"""Stream framing (pure)."""
import asyncio

from proxy.sse import iter_events


async def _collect(chunks, framing):
    async def gen():
        for c in chunks:
            yield c
    return [e async for e in iter_events(gen(), framing)]


def test_it_splits_sse_events_across_arbitrary_chunk_boundaries():
    body = (b'event: message_start\ndata: {"type":"message_start"}\n\n: ping\n\n'
            b'data: {"a":1}\r\n\r\ndata: [DONE]\n\n')
    for size in (1, 3, 7, len(body)):
        chunks = [body[i:i + size] for i in range(0, len(body), size)]
        assert asyncio.run(_collect(chunks, "sse")) == [{"type": "message_start"}, {"a": 1}]


def test_it_reads_ndjson_and_a_last_line_without_newline():
    assert asyncio.run(_collect([b'{"a":1}\n{"b"', b':2}\n{"c":3}'], "ndjson")) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_a_bare_json_error_body_in_an_sse_stream_is_an_event():
    assert asyncio.run(_collect([b'{"error":{"code":500}}'], "sse")) == [{"error": {"code": 500}}]
