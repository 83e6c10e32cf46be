"""The upstream transport (proxy/transport.py) as a hostile or broken provider meets it, over real loopback
sockets: early closes and resets, floods of headers, lost wake-ups, resends of work done, contexts kept
alive, framing edge cases and header injection."""
import asyncio
import gc
import socket
import struct
import weakref
import contextlib
import contextvars

import httpx
import pytest

from proxy.tests.test_transport import BODY, OK, Server, call, run, until  # noqa: F401
from proxy.transport import CutOff, NoAnswer, Transport


async def raw_server(handler):
    """A loopback server whose handler gets (reader, writer) for each connection."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def reset(writer):
    """Close with a TCP reset (RST) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_request(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head, await reader.readexactly(length)


def answering(data: bytes, then):
    """A handler that reads one request, writes data, then awaits then(writer)."""
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(data)
        await writer.drain()
        await then(writer)
    return handler


# A close-delimited body cut by a reset is taken for a whole answer.
def test_an_unframed_body_cut_by_a_reset_is_cut_off_not_complete(run):
    async def then(writer):
        await asyncio.sleep(0.05)
        reset(writer)
    handler = answering(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: {\"partial\"", then)

    async def main():
        server, url = await raw_server(handler)
        with pytest.raises(CutOff):
            await call(Transport(), url)
        server.close()
    run(main())


# The resend after a pooled connection closed unanswered goes on another pooled connection.
def test_the_resend_goes_on_a_new_connection_not_another_pooled_one(run):
    async def handler(reader, writer):
        """Each connection answers one request; its keep-alive has run out when the next comes."""
        await read_request(reader)
        await asyncio.sleep(0.05)  # both first calls in flight at once: two connections
        writer.write(OK)
        await writer.drain()
        try:
            await read_request(reader)
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async def main():
        server, url = await raw_server(handler)
        transport = Transport()
        await asyncio.gather(call(transport, url), call(transport, url))
        assert transport.opened == 2  # two pooled connections
        # the docstring: "sent once more on a new connection"
        assert (await call(transport, url))[:2] == (200, BODY)
        server.close()
    run(main())


# A waiter woken for a freed connection and cancelled before it runs takes the wake-up with it.
def test_a_cancelled_waiter_does_not_swallow_the_wake_up(run):
    async def main():
        async with Server(lambda n, head, body: [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"{}"]) as server:
            transport = Transport(max_connections=1)
            holder = await transport.handle_async_request(httpx.Request("POST", server.url + "/x", content=b"{}"))
            # the one connection is taken (its body unread)
            first = asyncio.create_task(call(transport, server.url))
            second = asyncio.create_task(call(transport, server.url))
            await asyncio.sleep(0.05)
            assert len(transport.waiting) == 2
            await holder.aclose()  # closed, a slot is free: wakes `first` (no await inside)
            first.cancel()  # ... whose client went away in the same loop iteration
            status = (await asyncio.wait_for(second, 1.0))[0]  # pool timeout is 2 s
            assert status == 200
    run(main())


# A response closed from another task (a watchdog) while its reader waits: the reader hangs.
def test_closing_a_response_while_it_is_read_wakes_the_reader(run):
    handler = answering(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                        lambda writer: asyncio.sleep(30))

    async def main():
        server, url = await raw_server(handler)
        transport = Transport()
        response = await transport.handle_async_request(httpx.Request("POST", url + "/x", content=b"{}"))

        async def read():
            return [chunk async for chunk in response.aiter_raw()]

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.1)
        await response.aclose()
        done, _ = await asyncio.wait([reader], timeout=1.0)
        assert done, "the reader still waits on a connection that was closed under it"
        reader.cancel()
        server.close()
    run(main())


# Headers of any size are read into memory: no limit on a head (aiohttp's: 8190 a line/field).
def test_a_huge_head_is_refused(run):
    async def handler(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        try:
            for _ in range(64):  # 64 MiB of header
                writer.write(b"x-filler: " + b"a" * (1024 * 1024) + b"\r\n")
                await writer.drain()
            writer.write(b"content-length: 2\r\n\r\n{}")
            await writer.drain()
        except ConnectionError:
            pass

    async def main():
        server, url = await raw_server(handler)
        with pytest.raises(httpx.RemoteProtocolError):
            status, body, response = await call(Transport(), url)
            print("accepted", sum(len(v) for _, v in response.headers.raw), "bytes of headers")
        server.close()
    run(main())


# Transfer-Encoding that is not chunked: the body ends with the connection (RFC 9112 6.3).
def test_a_non_chunked_transfer_encoding_body_ends_with_the_connection(run):
    async def main():
        answer = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nhello", b" world", None]
        async with Server(lambda n, head, body: answer) as server:
            assert (await call(Transport(), server.url))[:2] == (200, b"hello world")
    run(main())


# The provider read the request and worked on it for a while before the connection dropped:
#    the request is sent a second time (a second generation billed).
def test_a_request_the_provider_worked_on_is_not_sent_again(run):
    async def answer(n, head, body):
        if n == 2:
            await asyncio.sleep(0.5)  # generating...
            return None  # ... and crashed / a load balancer cut it
        return OK

    async def main():
        async with Server(answer) as server:
            transport = Transport()
            await call(transport, server.url)
            with contextlib.suppress(httpx.TransportError):
                await call(transport, server.url, b'{"charge": "me"}')
            assert [b for _, b in server.requests].count(b'{"charge": "me"}') == 1
    run(main())


# Under asyncio, a body read with back-pressure re-registers the socket's reader from the
#    call's context: the pooled connection keeps the call's context (what its ContextVars hold).
secret: contextvars.ContextVar = contextvars.ContextVar("secret")


class Key:
    pass


def test_a_pooled_connection_does_not_keep_the_context_of_a_call_it_served(run):
    big = b"x" * (2 * 1024 * 1024)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big

    async def main():
        async with Server(lambda n, head, body: answer) as server:
            transport = Transport()

            async def one_call():
                key = Key()
                secret.set(key)
                request = httpx.Request("POST", server.url + "/x", content=b"{}")
                response = await transport.handle_async_request(request)
                async for _ in response.aiter_raw():
                    await asyncio.sleep(0.001)  # a slow reader: the socket is paused and resumed
                await response.aclose()
                return weakref.ref(key)

            ref = await asyncio.create_task(one_call(), context=contextvars.Context())
            await asyncio.sleep(0.05)
            gc.collect()
            assert transport.pools and any(p.idle for p in transport.pools.values())  # pooled
            assert ref() is None, "the pooled connection keeps the call's context alive"
    run(main())


# A host with an IDNA-2008-only name: the transport resolves/verifies url.host (unicode, encoded
#    by Python's IDNA 2003 codec), not url.raw_host (what httpx sent in Host).
def test_the_host_connected_to_is_the_urls_ascii_host(run, monkeypatch):
    seen = {}

    async def main():
        loop = asyncio.get_running_loop()

        async def spy(factory, host, port, **kw):
            seen["host"], seen["sni"] = host, kw.get("server_hostname")
            raise ConnectionRefusedError("spy")

        monkeypatch.setattr(loop, "create_connection", spy, raising=False)
        with pytest.raises(httpx.ConnectError):
            await Transport().handle_async_request(httpx.Request("POST", "https://straße.de/x", content=b"{}"))

    asyncio.run(main())
    url = httpx.URL("https://straße.de/x")
    assert seen["host"].encode("idna") == url.raw_host, (seen, url.raw_host)


# A host name Python's resolver cannot encode: UnicodeError escapes (a 500, not a 502).
def test_a_host_the_resolver_cannot_encode_is_a_connect_error(run):
    async def main():
        with pytest.raises(httpx.TransportError):
            await Transport().handle_async_request(httpx.Request("POST", "http://a..b/x", content=b"{}"))
    run(main())


# 101 Switching Protocols (HttpParserUpgrade is not an HttpParserError).
def test_an_upgrade_answer_is_a_protocol_error(run):
    async def main():
        answer = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x00"
        async with Server(lambda n, head, body: [answer]) as server:
            with pytest.raises(httpx.RemoteProtocolError) as info:
                await asyncio.wait_for(call(Transport(), server.url), 2)
            assert not isinstance(info.value, CutOff)
    run(main())


# A fresh connection the provider closes right after accepting it: under uvloop the write to
#     its closed transport raises RuntimeError (not an httpx error: upstream.py answers a 500).
def _accept_and_close(rst):
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if rst:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener


@pytest.mark.parametrize("rst", [False, True])
def test_a_connection_closed_as_it_opens_fails_with_an_httpx_error(run, rst):
    listener = _accept_and_close(rst)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"

    async def main():
        transport = Transport()
        escaped = []

        async def one():
            try:
                await asyncio.wait_for(transport.handle_async_request(httpx.Request("POST", url, content=b"{}")), 2)
            except (httpx.HTTPError, OSError):
                pass
            except BaseException as exc:
                escaped.append(exc)

        for _ in range(10):
            await asyncio.gather(*(one() for _ in range(20)))
        assert not escaped, f"{len(escaped)} of 200: {escaped[0]!r}"
    try:
        run(main())
    finally:
        listener.close()


# The same through upstream.send() under uvloop (the production loop): not an UpstreamError.
def test_upstream_send_to_a_provider_closing_as_it_accepts_is_an_upstream_error(settings):
    import uvloop
    from proxy import upstream
    from proxy.providers import PROVIDERS
    from proxy.providers.base import UpstreamError, UpstreamRequest

    listener = _accept_and_close(False)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/chat/completions"

    async def main():
        try:
            for _ in range(20):
                with pytest.raises(UpstreamError):
                    await upstream.send(PROVIDERS["openai"], UpstreamRequest(url, {"content-type": "application/json"},
                                                                             {"model": "m", "messages": []}))
        finally:
            await upstream.close()
    try:
        uvloop.run(main())
    finally:
        listener.close()


# Header names/values httpx's own transport (h11) refuses are sent as they are: NUL, a colon or
#     a space in a name (a second "content-length :" the provider may read).
@pytest.mark.parametrize("name,value", [(b"x-a", b"a\x00b"), (b"content-length ", b"5"), (b"x-a: b", b"c")])
def test_an_invalid_header_is_refused_before_anything_is_sent(run, name, value):
    async def main():
        async with Server(lambda n, head, body: OK) as server:
            request = httpx.Request("POST", server.url + "/x", content=b"{}", headers=[(name, value)])
            with pytest.raises(httpx.LocalProtocolError):
                await Transport().handle_async_request(request)
            assert server.requests == [], server.requests
    run(main())


def test_a_408_on_a_reused_connection_as_it_was_reused_is_sent_again(run):
    """The provider's idle timeout answered just as the connection was reused: not this call's answer."""
    timed_out = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"

    async def main():
        async with Server(lambda n, head, body: timed_out if n == 2 else OK) as server:
            transport = Transport()
            await call(transport, server.url)
            assert (await call(transport, server.url))[:2] == (200, BODY)
            assert len(server.requests) == 3 and transport.opened == 2
        async with Server(lambda n, head, body: timed_out) as fresh:  # on a new connection it is the answer
            assert (await call(Transport(), fresh.url))[0] == 408 and len(fresh.requests) == 1
    run(main())


def test_an_answer_larger_than_the_gateway_reads_is_a_502_naming_it(monkeypatch):
    from proxy import upstream
    from proxy.providers import PROVIDERS
    from proxy.providers.base import UpstreamError, UpstreamRequest

    monkeypatch.setattr(upstream, "MAX_ANSWER_BYTES", 1000)
    big = b'{"x": "' + b"a" * 5000 + b'"}'

    async def main():
        async with Server(lambda n, head, body: [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big),
                                                 big[:2000], big[2000:]]) as server:
            try:
                with pytest.raises(UpstreamError) as info:
                    await upstream.send(PROVIDERS["openai"], UpstreamRequest(server.url + "/v1/chat/completions",
                                                                             {}, {"model": "m"}))
            finally:
                await upstream.close()
            assert info.value.kind == "bad_response" and "larger than the gateway reads" in info.value.message
    asyncio.run(main())
