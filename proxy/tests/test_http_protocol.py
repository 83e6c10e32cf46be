"""The served HTTP protocol: an answer's head and body leave in one write, a stream's head at once."""
import asyncio
import socket
import time

import pytest
import uvicorn

from proxy.http_protocol import OneWriteProtocol


class Recording(asyncio.Transport):
    """The socket's side of the protocol: what it was given to write, write by write."""

    def __init__(self):
        super().__init__()
        self.writes, self.closed = [], False

    def write(self, data):
        self.writes.append(bytes(data))

    def writelines(self, chunks):
        self.writes.append(b"".join(chunks))

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


current = {}  # the protocol and transport of the connection being served


def served(app, request: bytes, then=None, turns: int = 20) -> Recording:
    """The app served on one connection given request's bytes; then(protocol) runs right after."""
    async def run():
        config = uvicorn.Config(app, http=OneWriteProtocol, lifespan="off", log_level="warning")
        config.load()
        protocol = current["protocol"] = OneWriteProtocol(config, uvicorn.server.ServerState(), app_state={})
        transport = current["transport"] = Recording()
        protocol.connection_made(transport)
        protocol.data_received(request)
        if then is not None:
            await then(protocol)
        for _ in range(turns):
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        return transport
    return asyncio.run(run())


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_complete_answer_is_one_write():
    transport = served(answer, GET)
    assert len(transport.writes) == 1
    head, body = transport.writes[0].split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 2" in head and body == b"{}"


def test_an_answers_last_write_goes_before_the_app_goes_on_with_its_bookkeeping():
    """The gateway's handler writes its trace and runs the policies' log phases after the answer's
    last send, in the same loop turn: the client does not wait for them (a stream's end is a write
    of its own)."""
    seen = {}

    async def stream_then_account(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        seen["written"] = b"".join(current["transport"].writes)  # still in the turn of the last send

    served(stream_then_account, GET)
    assert seen["written"].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


def test_two_pipelined_requests_get_two_answers_in_order():
    transport = served(answer, GET + GET)
    assert [w.count(b"HTTP/1.1 200 OK") for w in transport.writes] == [1, 1]


def test_a_streams_head_goes_before_its_first_event_comes():
    """The head must not wait for an upstream's first event: the client sees the status (and the
    x-ratelimit headers) at once."""
    seen = {}

    async def stream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await asyncio.sleep(0.01)  # the upstream's first event
        seen["before the first event"] = list(current["transport"].writes)
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    transport = served(stream, GET)
    assert len(seen["before the first event"]) == 1 and seen["before the first event"][0].startswith(b"HTTP/1.1 200")
    assert b"".join(transport.writes[1:]) == b"9\r\ndata: 1\n\n\r\n0\r\n\r\n"


def test_a_closing_answer_sends_its_head_and_body_before_it_closes():
    transport = served(answer, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert transport.closed and len(transport.writes) == 1 and transport.writes[0].endswith(b"{}")


@pytest.mark.parametrize("size", [10, 3_000_000])
def test_across_a_real_socket_the_client_gets_head_and_body(gateway, proxy_client, size):
    """Served for real (the tests' gateway runs this protocol): a small and a large answer arrive whole."""
    r = proxy_client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": [
        {"role": "user", "content": "x" * size}]})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


def test_a_head_answer_held_at_shutdown_is_sent_before_the_connection_closes():
    """A HEAD answer is complete with its head alone (held): a shutdown in the same loop turn closes
    the connection through the same hold, so the head goes first."""
    async def shut_down_in_the_same_turn(protocol):
        while not protocol.cycle.response_complete:
            await asyncio.sleep(0)
        protocol.shutdown()
    transport = served(answer, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", shut_down_in_the_same_turn)
    assert transport.closed and len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK")


def test_a_400_the_protocol_writes_itself_does_not_overtake_a_held_head():
    """Bytes that are not HTTP, read while an answer's head is held, get uvicorn's 400 after it."""
    async def interrupted(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        current["protocol"].data_received(b"\x00\x01 not http\r\n\r\n")  # read in the same turn
        await send({"type": "http.response.body", "body": b"{}"})

    written = b"".join(served(interrupted, GET).writes)
    assert written.startswith(b"HTTP/1.1 200 OK") and b"400 Bad Request" in written
