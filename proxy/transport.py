"""The upstream client's httpx transport: HTTP/1.1 with keep-alive over asyncio protocols, parsed by
httptools (uvicorn's parser, already a requirement).

httpx's own pool (httpcore) degrades under concurrency, and aiohttp under httpx (httpx-aiohttp)
cost 170 to 225 us a call above the round trip itself on the 2-core bench machine: three layers of
request and response objects, a middleware chain, a timer per read. This one writes the request in
one write, parses the answer as it arrives and hands the body over in the chunks it came in: 65 to
105 us above the round trip, most of it httpx's Request and Response (bench/transport_cost.py).

A call fails with httpx's exceptions, each with the cause that tells what happened: ConnectError
(from the OSError) or ConnectTimeout when no connection could be opened, NoAnswer when the provider
closed or reset (from ConnectionResetError) the connection before a byte of an answer, CutOff when it
did so in the middle of one, RemoteProtocolError when the answer was not HTTP. A call that may not
have reached the provider is sent once more, on a new connection: no connection could be opened,
the connection closed before it was written, or a pooled one closed without a byte of an answer
within RESEND_WITHIN_S of the write (what the provider closing it at the end of its keep-alive, just
as the call reused it, looks like). A fresh connection closed so, or one closed later, may have
carried a request the provider took and worked on: not sent again.
"""
from __future__ import annotations

import asyncio
import contextvars
import re
import ssl
import time
from collections import deque

import httptools
import httpx

_HIGH_WATER = 256 * 1024  # bytes of a body read ahead of its reader before the socket is paused
RESEND_WITHIN_S = 0.25  # a pooled connection closed unanswered this soon after the write: sent again
_MAX_HEAD = 64 * 1024  # bytes of status line and headers (h11's limit; aiohttp's was 8190 a line)


class NoAnswer(httpx.RemoteProtocolError):
    """The connection closed before a byte of an answer."""


class CutOff(httpx.ReadError):
    """The connection closed in the middle of an answer."""


class _Connection(asyncio.Protocol):
    """One connection and the one answer it is reading (HTTP/1.1: one at a time)."""

    def __init__(self, pool: _Pool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.served = 0  # answers read whole on it
        self.idle_since = 0.0
        self.closed = False
        self.context = contextvars.Context()  # what the socket's callbacks run in: never a call's
        self._reset()

    def _reset(self):
        self.head: asyncio.Future | None = None  # set when the status line and headers are in
        self.headers: list = []
        self.chunks: deque = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future | None = None  # the body's reader, waiting for more
        self.answered = False  # a byte of the answer came
        self.complete = False
        self.spoiled = False
        self.keep_alive = False
        self.framed = False  # the body's end is told (a length, or chunked): else it ends with the connection
        self.error: Exception | None = None
        self.head_bytes = 0
        self.sent_at = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes):
        if self.head is None:  # nothing was asked: not an answer to anything
            self.transport.close()
            return
        self.answered = True
        heading = not self.head.done()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(httpx.RemoteProtocolError(f"the answer is not HTTP/1.1 ({exc!r})"))
            self.transport.close()
            return
        if heading and not self.head.done():  # httptools holds a header whole: a head must be bounded
            self.head_bytes += len(data)
            if self.head_bytes > _MAX_HEAD:
                self._fail(httpx.RemoteProtocolError(f"the answer's head is over {_MAX_HEAD} bytes"))
                self.transport.close()

    def connection_lost(self, exc):
        self.closed = True
        self.pool.forget(self)
        if self.head is None or self.complete or self.error is not None:
            return
        if self.head.done() and not self.framed and exc is None:  # the body ran to the end of the connection
            self.on_message_complete()
        elif not self.answered:
            self._fail(NoAnswer("the provider closed the connection without answering"), exc)
        else:
            self._fail(CutOff("the connection closed in the middle of the answer"), exc)

    def pause_writing(self):
        pass  # a request is written whole; the transport buffers it

    def resume_writing(self):
        pass

    # httptools callbacks

    def on_message_begin(self):
        if self.complete:  # a second answer to one request: the connection cannot be trusted again
            self.spoiled = True

    def on_header(self, name: bytes, value: bytes):
        self.headers.append((name, value))

    def on_headers_complete(self):
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer: the real one follows
            self.headers = []
            return
        if status == 408 and self.served and time.monotonic() - self.sent_at < RESEND_WITHIN_S:
            # The provider timed the idle connection out just as it was reused: no answer to this call.
            self._fail(NoAnswer("the provider timed the pooled connection out (408)"))
            self.transport.close()
            return
        length, coding = False, b""
        for name, value in self.headers:
            name = name.lower()
            if name == b"content-length":
                length = True
            elif name == b"transfer-encoding":
                coding = value.rsplit(b",", 1)[-1].strip().lower()
        # A transfer coding that does not end in chunked runs to the end of the connection (RFC 9112 6.3).
        self.framed = length or coding == b"chunked"
        self.keep_alive = self.parser.should_keep_alive()  # told right only here
        if self.head is not None and not self.head.done():
            self.head.set_result(status)

    def on_body(self, body: bytes):
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self):
        if self.head is not None and self.head.done() and not self.complete:
            self.complete = True
            self._wake()

    # the call's side

    def _fail(self, error: Exception, cause: BaseException | None = None):
        error.__cause__ = cause
        self.error = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a call cancelled meanwhile logs nothing
        self._wake()

    def _wake(self):
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def request(self, head: bytes, body: bytes) -> int:
        """Writes one request; returns the answer's status once its headers are in."""
        if self.closed or self.transport.is_closing():  # closed before a byte was sent
            raise NoAnswer("the provider closed the connection before the request was sent")
        self.head = asyncio.get_running_loop().create_future()
        self.sent_at = time.monotonic()
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        return await self.head

    async def body(self):
        """The answer's body as it came, chunk by chunk."""
        while True:
            if self.chunks:
                chunk = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
                self.chunks.clear()
                self.buffered = 0
                if self.paused:
                    self.paused = False
                    # asyncio re-registers the reader with the current context: the connection's own.
                    self.context.run(self.transport.resume_reading)
                yield chunk
            elif self.complete:
                return
            elif self.error is not None:
                raise self.error
            else:
                self.waiter = asyncio.get_running_loop().create_future()
                try:
                    await self.waiter
                finally:
                    self.waiter = None

    def expire_at(self, when: float):
        """The body must be whole by then (loop time): one timer for a whole stream, not one a read."""
        self.timer = asyncio.get_running_loop().call_at(when, self._expired)

    def _expired(self):
        self.timer = None
        if not self.complete:
            self._fail(httpx.ReadTimeout("the answer was not whole within its deadline"))
            self.transport.close()

    def done(self):
        """The call is over: back to the pool when its answer was read whole and the provider keeps
        the connection, else closed (an answer left unread closes it: the provider stops)."""
        if self.timer is not None:
            self.timer.cancel()
        reusable = self.complete and self.keep_alive and not (self.chunks or self.spoiled or self.closed)
        waiter = self.waiter
        self._reset()
        if reusable:
            self.served += 1
            self.pool.put(self)
        else:
            self.close()
        if waiter is not None and not waiter.done():  # a reader in another task: told, not left waiting
            waiter.set_exception(httpx.ReadError("the response was closed while it was read"))

    def close(self):
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class _Body(httpx.AsyncByteStream):
    def __init__(self, connection: _Connection):
        self.connection = connection

    def __aiter__(self):
        return self.connection.body()

    async def aclose(self):
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.done()


class _Pool:
    """The connections to one origin: all of them, and the idle ones, newest last."""

    def __init__(self, owner: Transport):
        self.owner = owner
        self.idle: deque[_Connection] = deque()
        self.open: set[_Connection] = set()

    def take(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if now - connection.idle_since <= self.owner.keepalive_s and not connection.closed:
                return connection
            connection.close()
        return None

    def put(self, connection: _Connection):
        connection.idle_since = time.monotonic()
        self.idle.append(connection)
        self.owner.freed()

    def forget(self, connection: _Connection):
        if connection in self.open:
            self.open.discard(connection)
            if connection in self.idle:
                self.idle.remove(connection)
            self.owner.freed()


class Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to any number of origins, at most max_connections open at once (a call waits for one).

    A request's extensions: "timeout" as httpx's (connect and pool are used), and "deadline", the
    loop time by which its answer's body must be whole, or reading it raises httpx.ReadTimeout."""

    def __init__(self, max_connections: int = 100, keepalive_s: float = 30.0):
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self.ssl_context: ssl.SSLContext | None = None
        self.pools: dict[tuple, _Pool] = {}
        self.waiting: deque[asyncio.Future] = deque()
        self.opened = 0  # connections ever opened

    def freed(self):
        """A connection went idle or closed: the first call waiting for one goes on."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the URL's scheme is not http or https: {url.scheme!r}")
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = b"".join([chunk async for chunk in request.stream])
        head = _head(request, body)
        timeout = request.extensions.get("timeout") or {}
        key = (url.scheme, url.host, url.port)
        pool = self.pools.get(key) or self.pools.setdefault(key, _Pool(self))
        fresh = False
        for last in (False, True):
            connection = None if fresh else pool.take()
            pooled = connection is not None
            if connection is None:
                try:
                    connection = await self._connect(pool, url, timeout)
                except httpx.ConnectError:
                    if last:
                        raise
                    continue
            try:
                status = await connection.request(head, body)
            except NoAnswer:
                connection.close()
                # Nothing sent, or a pooled connection closed at once: the provider's keep-alive ran
                # out as it was reused. Closed later, the provider may have worked on it: not again.
                if (connection.head is None or pooled and time.monotonic() - connection.sent_at < RESEND_WITHIN_S) \
                        and not last:
                    fresh = True  # once more, on a new connection
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            headers, connection.headers = connection.headers, []
            deadline = request.extensions.get("deadline")
            if deadline is not None:
                connection.expire_at(deadline)
            return httpx.Response(status, headers=headers, stream=_Body(connection),
                                  extensions={"http_version": b"HTTP/1.1"})

    async def _connect(self, pool: _Pool, url: httpx.URL, timeout: dict) -> _Connection:
        while sum(len(p.open) for p in self.pools.values()) >= self.max_connections:
            idle = [p for p in self.pools.values() if p.idle]
            if idle:  # an idle connection to another origin makes room
                idle[0].idle.popleft().close()
                continue
            waiter = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            try:
                async with asyncio.timeout(timeout.get("pool")):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self.freed()  # woken, but leaving: the next call waiting goes on instead
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout("no upstream connection was free in time") from None
                raise
            reused = pool.take()
            if reused is not None:
                return reused
        connection = _Connection(pool)
        pool.open.add(connection)
        loop = asyncio.get_running_loop()
        https = url.scheme == "https"
        host = url.raw_host.decode("ascii")  # IDNA 2008, as the Host header says; not Python's IDNA 2003
        opening = loop.create_connection(lambda: connection, host, url.port or (443 if https else 80),
                                         ssl=self._ssl() if https else None,
                                         server_hostname=host if https else None)
        try:
            async with asyncio.timeout(timeout.get("connect")):
                # In a context of its own: the connection's callbacks run in the context it was made
                # in, and would keep what the call's holds (its prompt, its key) as long as it lives.
                await loop.create_task(opening, context=contextvars.Context())
        except TimeoutError:
            connection.close()
            raise httpx.ConnectTimeout("could not connect in time") from None
        except (OSError, UnicodeError, ValueError) as exc:  # a name the resolver cannot encode, too
            connection.close()
            raise httpx.ConnectError(str(exc)) from exc
        except BaseException:
            connection.close()
            raise
        self.opened += 1
        return connection

    def _ssl(self) -> ssl.SSLContext:
        if self.ssl_context is None:
            # The system's trust store (SSL_CERT_FILE and SSL_CERT_DIR honoured), as aiohttp's was.
            self.ssl_context = ssl.create_default_context()
            self.ssl_context.set_alpn_protocols(["http/1.1"])
        return self.ssl_context

    async def aclose(self):
        for pool in self.pools.values():
            for connection in list(pool.open):
                connection.close()
        self.pools.clear()


_FRAMING = (b"content-length", b"transfer-encoding")  # the body is sent whole, with its length
_USER_AGENT = b"user-agent: smartflow"


_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # in a value: control characters but HTAB (CR, LF, NUL)
_TARGET = re.compile(rb"[!-~]+")  # the request target: visible ASCII


def _head(request: httpx.Request, body: bytes) -> bytes:
    raw, target = request.headers.raw, request.url.raw_path
    if (not all(_NAME.fullmatch(name) for name, _ in raw) or _FORBIDDEN.search(b"".join(v for _, v in raw))
            or not _TARGET.fullmatch(target)):
        raise httpx.LocalProtocolError("a header name or value, or the path, holds a character HTTP/1.1 forbids")
    names = [name.lower() for name, _ in raw]
    lines = [name + b": " + value for (name, value), lower in zip(raw, names) if lower not in _FRAMING]
    if b"user-agent" not in names:  # some providers' front ends turn away a request without one
        lines.append(_USER_AGENT)
    lines.append(b"content-length: %d" % len(body))
    fields = b"\r\n".join(lines) + b"\r\n"
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (request.method.encode(), target, fields)
