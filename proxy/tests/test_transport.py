"""The upstream transport (proxy/transport.py) over real loopback sockets, against servers that
answer as providers do and as broken ones do: keep-alive, framing, back-pressure, the pool's
limit, TLS, and what it refuses to send."""
import asyncio
import contextlib
import ssl
import subprocess

import httpx
import pytest
import uvloop
from hypothesis import given, settings as hsettings, strategies as st

from proxy.transport import CutOff, NoAnswer, Transport

BODY = b'{"id":"chatcmpl-1","choices":[]}'
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)


class Server:
    """A loopback server that reads each request whole and answers with what `answer(n, head, body)`
    returns for the n-th (awaited if a coroutine): bytes written as they are, a list of parts written
    one by one with a pause (None among them: close the connection there), None: close at once."""

    def __init__(self, answer):
        self.answer, self.requests, self.connections = answer, [], 0
        self.open = 0
        self.most_open = 0

    async def __aenter__(self):
        tls = getattr(self, "tls", None)
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://localhost:{port}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                answer = self.answer(len(self.requests), head, body)
                if asyncio.iscoroutine(answer):
                    answer = await answer
                if answer is None:
                    writer.close()
                    return
                for part in answer if isinstance(answer, list) else [answer]:
                    if part is None:
                        writer.close()
                        return
                    writer.write(part)
                    await writer.drain()
                    if isinstance(answer, list):
                        await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def until(condition, seconds=5.0):
    for _ in range(int(seconds * 100)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


async def call(transport, url, body=b"{}", headers=None):
    request = httpx.Request("POST", url + "/v1/chat/completions", content=body,
                            headers=headers or {"content-type": "application/json"},
                            extensions={"timeout": {"connect": 2, "pool": 2}})
    response = await transport.handle_async_request(request)
    try:
        return response.status_code, await response.aread(), response
    finally:
        await response.aclose()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    return asyncio.run if request.param == "asyncio" else uvloop.run


def test_answers_are_read_and_the_connection_is_kept(run):
    async def main():
        async with Server(lambda n, head, body: OK) as server:
            transport = Transport()
            for _ in range(3):
                status, body, response = await call(transport, server.url, b'{"a": 1}')
                assert (status, body, response.headers["content-type"]) == (200, BODY, "application/json")
            assert server.connections == 1 and transport.opened == 1
            head, sent = server.requests[0]
            assert sent == b'{"a": 1}' and head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
            assert b"content-length: 8" in head.lower() and b"\r\nuser-agent: smartflow\r\n" in head
            await transport.aclose()
    run(main())


def test_a_chunked_answer_and_one_that_ends_with_the_connection_are_read_whole(run):
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    unframed = [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello", b" world", None]

    async def main():
        for answer, connections in ((chunked, 1), (unframed, 2)):
            async with Server(lambda n, head, body: answer) as server:
                transport = Transport()
                assert (await call(transport, server.url))[:2] == (200, b"hello world")
                assert (await call(transport, server.url))[:2] == (200, b"hello world")
                assert transport.opened == connections  # connection: close is not reused
                await transport.aclose()
    run(main())


def test_a_pooled_connection_the_provider_closed_is_sent_again_once_and_a_fresh_one_never(run):
    async def main():
        async with Server(lambda n, head, body: OK if n in (1, 3) else None) as server:
            transport = Transport()
            await call(transport, server.url)
            assert (await call(transport, server.url))[:2] == (200, BODY)  # closed unanswered, sent again
            assert len(server.requests) == 3 and transport.opened == 2
            server.answer = lambda n, head, body: None
            with pytest.raises(NoAnswer):  # a fresh connection: it may have reached the provider
                await Transport().handle_async_request(httpx.Request("POST", server.url + "/x", content=b"{}"))
            assert len(server.requests) == 4
    run(main())


def test_an_answer_cut_in_its_body_or_head_is_cut_off_and_not_sent_again(run):
    async def main():
        for cut in (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial", b"HTTP/1.1 200 OK\r\ncontent-le"):
            async with Server(lambda n, head, body: [cut, None]) as server:
                transport = Transport()
                with pytest.raises(CutOff):
                    await call(transport, server.url)
                assert len(server.requests) == 1
    run(main())


def test_a_server_that_does_not_speak_http_is_a_protocol_error(run):
    async def main():
        async with Server(lambda n, head, body: b"SSH-2.0-OpenSSH_9.2\r\n\r\n") as server:
            with pytest.raises(httpx.RemoteProtocolError) as info:
                await call(Transport(), server.url)
            assert not isinstance(info.value, NoAnswer)
    run(main())


def test_a_large_answer_is_read_with_back_pressure_and_arrives_whole(run):
    big = bytes(range(256)) * (4 * 1024 * 16)  # 16 MiB: far more than the high-water mark
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big

    async def main():
        async with Server(lambda n, head, body: answer) as server:
            transport = Transport()
            request = httpx.Request("POST", server.url + "/x", content=b"{}")
            response = await transport.handle_async_request(request)
            got, most = [], 0
            async for chunk in response.aiter_raw():
                got.append(chunk)
                most = max(most, len(chunk))
                await asyncio.sleep(0)  # a slow reader
            await response.aclose()
            assert b"".join(got) == big and len(got) > 1
            assert most < 2 * 1024 * 1024  # the socket was paused, not read into memory whole
            assert (await call(transport, server.url))[0] == 200 and transport.opened == 1
    run(main())


def test_a_body_left_unread_closes_the_connection(run):
    async def main():
        async with Server(lambda n, head, body: [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                                                 b"5\r\nhello\r\n"] if n == 1 else OK) as server:
            transport = Transport()
            response = await transport.handle_async_request(httpx.Request("POST", server.url + "/x", content=b""))
            await response.aclose()  # a stream the client left: the provider must see it go
            await until(lambda: server.open == 0)
            assert (await call(transport, server.url))[:2] == (200, BODY) and transport.opened == 2
    run(main())


def test_at_most_max_connections_are_open_and_every_call_is_answered(run):
    async def slow(n, head, body):
        await asyncio.sleep(0.02)
        return OK

    async def main():
        async with Server(slow) as server:
            transport = Transport(max_connections=2)
            results = await asyncio.gather(*(call(transport, server.url) for _ in range(10)))
            assert [r[:2] for r in results] == [(200, BODY)] * 10
            assert server.most_open <= 2 and transport.opened == 2
    run(main())


def test_a_pool_full_of_another_origins_idle_connections_makes_room(run):
    async def main():
        async with Server(lambda n, head, body: OK) as one, Server(lambda n, head, body: OK) as two:
            transport = Transport(max_connections=1)
            await call(transport, one.url)
            assert (await call(transport, two.url))[0] == 200  # not a PoolTimeout
            await until(lambda: one.open == 0)
    run(main())


def test_an_idle_connection_past_its_keep_alive_is_not_reused(run):
    async def main():
        async with Server(lambda n, head, body: OK) as server:
            transport = Transport(keepalive_s=0.05)
            await call(transport, server.url)
            await asyncio.sleep(0.1)
            await call(transport, server.url)
            assert transport.opened == 2
    run(main())


@pytest.mark.parametrize("name,value", [("x-a", "ok\r\nx-smuggled: 1"), ("x-a\r\nx-b", "1"), ("x-a", "ok\rx")])
def test_a_header_with_a_line_break_is_refused_before_anything_is_sent(run, name, value):
    async def main():
        async with Server(lambda n, head, body: OK) as server:
            request = httpx.Request("POST", server.url + "/x", content=b"{}", headers=[(name.encode(), value.encode())])
            with pytest.raises(httpx.LocalProtocolError):
                await Transport().handle_async_request(request)
            assert server.requests == [] and server.connections == 0
    run(main())


def test_a_connection_refused_is_a_connect_error_naming_the_cause(run):
    from conftest import free_port

    async def main():
        with pytest.raises(httpx.ConnectError) as info:
            await call(Transport(), f"http://127.0.0.1:{free_port()}")
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
    run(main())


@pytest.mark.parametrize("apart", [False, True])
def test_bytes_after_an_answer_close_its_connection(run, apart):
    """A second answer to one request, in the same read or later while the connection is idle."""
    extra = b"HTTP/1.1 200 OK\r\n\r\n"

    async def main():
        async with Server(lambda n, head, body: ([OK, extra] if apart else OK + extra) if n == 1 else OK) as server:
            transport = Transport()
            assert (await call(transport, server.url))[:2] == (200, BODY)
            await asyncio.sleep(0.2)
            assert (await call(transport, server.url))[:2] == (200, BODY)
            assert transport.opened == 2
    run(main())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert


def test_https_is_verified_against_the_trust_store(run, certificate, monkeypatch):
    key, cert = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def main(trusted):
        server = Server(lambda n, head, body: OK)
        server.tls = served
        async with server:
            transport = Transport()
            if not trusted:
                with pytest.raises(httpx.ConnectError) as info:
                    await call(transport, server.url)
                assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
                return
            for _ in range(2):
                assert (await call(transport, server.url))[:2] == (200, BODY)
            assert transport.opened == 1

    run(main(trusted=False))  # a self-signed certificate the system does not trust
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    run(main(trusted=True))


@hsettings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(OK) * 2 - 1), max_size=8, unique=True),
       chunked=st.booleans())
def test_an_answer_split_anywhere_reads_the_same(cuts, chunked):
    """However the provider's bytes are split across reads, the same status and body come out."""
    body = BODY * 2
    answer = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
              % (len(BODY), BODY, len(BODY), BODY) if chunked else
              b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    points = sorted(c for c in cuts if c < len(answer))
    parts = [answer[a:b] for a, b in zip([0] + points, points + [len(answer)])]

    async def main():
        async with Server(lambda n, head, body: parts) as server:
            transport = Transport()
            assert (await call(transport, server.url))[:2] == (200, body)
            assert (await call(transport, server.url))[:2] == (200, body)
            assert transport.opened == 1
    asyncio.run(main())


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_the_gateway_reads_a_compressed_answer_decompressed_and_a_plain_one_as_sent(encoding):
    import gzip

    from proxy import upstream

    payload = gzip.compress(BODY) if encoding else BODY
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n" % len(payload)
    answer = head + (b"content-encoding: gzip\r\n" if encoding else b"") + b"\r\n" + payload

    async def main():
        async with Server(lambda n, head, body: answer) as server:
            response = await Transport().handle_async_request(httpx.Request("POST", server.url + "/x", content=b""))
            assert await upstream._read(response) == BODY
            await response.aclose()
    asyncio.run(main())


def test_a_body_not_whole_by_its_deadline_times_out_and_closes_the_connection(run):
    trickle = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"] + [b"2\r\nab\r\n"] * 30 + [b"0\r\n\r\n"]

    async def main():
        async with Server(lambda n, head, body: trickle) as server:  # about 0.3 s: a part each 10 ms
            transport = Transport()
            loop = asyncio.get_running_loop()
            request = httpx.Request("POST", server.url + "/x", content=b"", extensions={"deadline": loop.time() + 0.1})
            response = await transport.handle_async_request(request)
            got = []
            with pytest.raises(httpx.ReadTimeout):
                async for chunk in response.aiter_raw():
                    got.append(chunk)
            assert 0 < len(b"".join(got)) < 60
            await response.aclose()
            await until(lambda: server.open == 0)
            request = httpx.Request("POST", server.url + "/x", content=b"", extensions={"deadline": loop.time() + 5})
            response = await transport.handle_async_request(request)
            assert await response.aread() == b"ab" * 30  # in time: whole, and its timer gone with it
            await response.aclose()
            assert transport.opened == 2 and not transport.pools[next(iter(transport.pools))].idle[0].timer
    run(main())
