"""A pipelined asyncio Redis client for the request path's scripts: one connection per event loop,
every call written at once and answered in order, replies parsed by hiredis.

redis-py's asyncio client spends ~100 us of Python per call (a pool checkout, a health check, packing
in Python, a retry wrapper): per request, more than the whole gateway's budget. Here a call is one
packed write and one future. Redis answers a connection's commands in the order they came, so the
futures wait in a queue. While a write is being answered the next one is held back, and what
gathers meanwhile goes in one write when the answers are in: a loopback write costs ~20 us of
syscall on a VM, and the calls gathered would wait on Redis anyway. Alone, a call is written in its
loop turn. A call that is not answered within the timeout aborts the connection and fails every
call waiting on it (their answers can no longer be matched); the next call reconnects. A posted
call (a settlement, a cache store) has no future: its answer goes to a callback.

One timer per connection watches the oldest call still waited for (answers come in order, so it is the
first that can be late); a timer per call cost more than the rest of the call. A timeout is Redis'
silence, not the loop's lateness: under a burst one loop turn can take longer than the timeout, and
an answer that arrived meanwhile sits unread. So the timer, when a call is late, looks again two
loop turns later (by then whatever was readable has been read) and fails only if nothing came in;
a connection is given a few loop turns as well as connect_timeout seconds.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque

import hiredis

log = logging.getLogger(__name__)
LAZY_S = 0.005
TIMEOUT_S = 0.5  # a call: a Redis that hangs costs the requests waiting on it this once (then their back-off)
CONNECT_TIMEOUT_S = 1.0  # a refused connection fails at once; a burst of new connections on a busy host needs more
CONNECT_TURNS = 8  # a healthy connect takes 3 to 5 loop turns (connected, set up, AUTH and SELECT answered)


class RedisError(Exception):
    """An error reply (the command reached Redis and was refused)."""


def lost_script(error: BaseException | None) -> bool:
    """Redis restarted or flushed its scripts (an EVALSHA refused): the script must go whole."""
    return isinstance(error, RedisError) and str(error).startswith("NOSCRIPT")


_background: set[asyncio.Task] = set()  # kept so that none is collected before it ends


def in_background(work) -> asyncio.Task:
    """work (a coroutine) on a task of the running loop that nobody awaits."""
    task = asyncio.get_running_loop().create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


class Script:
    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class _Posted:
    """A posted command's place among the awaited ones: its answer, or its failure, goes to
    then(answer, error, *payload). No future and no task; the connection's watch times it as it
    times an awaited call (with no call awaited, a hung Redis would hold every posted one)."""

    __slots__ = ("then", "payload")

    def __init__(self, then, payload: tuple):
        self.then, self.payload = then, payload

    def done(self) -> bool:
        return False

    def set_result(self, reply):
        self._tell(reply, None)

    def set_exception(self, error: BaseException):
        self._tell(None, error)

    def _tell(self, reply, error):
        try:
            self.then(reply, error, *self.payload)
        except Exception:  # the replies behind it must still be read
            log.exception("redis: handling a posted command's answer failed")


class _Whole:
    """An EVALSHA's place among the awaited ones: its answer goes to future, unless Redis has lost
    its scripts (NOSCRIPT), when the script goes again whole and that answer goes there. So the
    one future a caller holds is the outcome whatever happened (a caller gone meanwhile leaves it to
    whoever settles what it made)."""

    __slots__ = ("future", "pipe", "proto", "command")

    def __init__(self, future: asyncio.Future, pipe: "Pipe", proto: "_Protocol", command: tuple):
        self.future, self.pipe, self.proto, self.command = future, pipe, proto, command

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, reply):
        if not self.future.done():
            self.future.set_result(reply)

    def set_exception(self, error: BaseException):
        if self.future.done():
            return
        if lost_script(error) and not self.proto.lost:
            script, keys, args = self.command
            again = self.pipe._send(self.proto, ("EVAL", script.text, len(keys), *keys, *args))
            again.add_done_callback(self._again)
        else:
            self.future.set_exception(error)

    def _again(self, again: asyncio.Future):
        if self.future.done() or again.cancelled():
            return
        if again.exception() is not None:
            self.future.set_exception(again.exception())
        else:
            self.future.set_result(again.result())


class _Protocol(asyncio.Protocol):
    def __init__(self):
        self.reader = hiredis.Reader()
        self.pending: deque = deque()  # (future, deadline), in the order the commands were written
        self.transport = None
        self.lost = self.timed_out = False
        self.replies = 0  # answers read so far: whether Redis spoke while the watch looked again
        self.watch = None  # the timer on the oldest call still waited for
        self.extended = 0.0  # a late call's deadline moved here when Redis was answering (a long queue)
        self.scripts: set[str] = set()  # the SHA1s of the scripts sent whole on this connection
        self.buffer: list[bytes] = []  # packed commands not written yet
        self.urgent = False  # one of them is awaited (not only lazy ones)
        self.unanswered = 0  # commands written whose answers have not all come
        self.soon = self.later = None  # the handles that will write them

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.replies += 1
        self.reader.feed(data)
        pending = self.pending
        try:
            while (reply := self.reader.gets()) is not False:
                self.unanswered -= 1
                future = pending.popleft()[0]
                if future.done():
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(RedisError(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):  # garbage, or an answer nobody asked for
            self.transport.abort()
            return
        if self.unanswered <= 0 and self.urgent:  # what gathered while Redis answered goes now
            self.write()

    def flush(self):
        """The loop turn's write, held back while an earlier write is still being answered: the
        commands gathered meanwhile go in one write when it is (under load a write and a read
        serve many requests; alone, a call is written at once, as nothing is in flight)."""
        self.soon = None
        self.write_if_idle()

    def write_if_idle(self):
        """Written at once unless an earlier write waits for its answers (then gathered for after)."""
        if self.unanswered <= 0:
            self.write()

    def write(self):
        count, data = len(self.buffer), self._take()
        if data and not self.lost:
            self.unanswered += count
            self.transport.write(data)

    def _take(self) -> bytes:
        for handle in (self.soon, self.later):
            if handle is not None:
                handle.cancel()
        self.soon = self.later = None
        self.urgent = False
        data, self.buffer = b"".join(self.buffer), []
        return data

    def connection_lost(self, exc):
        self.lost = True
        self._take()
        error = (TimeoutError("Redis did not answer in time") if self.timed_out else
                 ConnectionError(f"Redis connection lost ({type(exc).__name__ if exc else 'closed'})"))
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(error)


class Pipe:
    """One event loop's connection to the Redis at url (redis://, rediss://, unix://)."""

    def __init__(self, url: str, timeout: float, connect_timeout: float):
        from redis.asyncio.connection import parse_url

        options = parse_url(url)
        self.host, self.port, self.path = options.get("host", "localhost"), options.get("port", 6379), options.get("path")
        self.tls = None
        if "SSL" in getattr(options.get("connection_class"), "__name__", ""):  # rediss://: redis-py's TLS, as the URL sets it
            from redis.asyncio.connection import RedisSSLContext

            settings = {name[4:]: value for name, value in options.items() if name.startswith("ssl_")}
            self.tls = RedisSSLContext(**{"cert_reqs": "required", "check_hostname": True, **settings}).get()
        self.username, self.password, self.db = options.get("username"), options.get("password"), options.get("db", 0)
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.loop = asyncio.get_running_loop()
        self.proto: _Protocol | None = None
        self.lock = asyncio.Lock()
        self.failed_at, self.failure = -1.0, ""

    def send(self, *args, lazy: bool = False) -> asyncio.Future:
        """The answer's future, on the open connection (call connect() first). Writes are gathered
        and made once per loop turn (a syscall costs more than a call's packing); a lazy one (a
        settlement nobody waits for) rides along with the next write, or goes within LAZY_S."""
        return self._send(self.proto, args, lazy)

    def send_now(self, *args) -> asyncio.Future:
        """send(), written at once when no write waits for an answer (as start() is): a read sent
        ahead is answered while the caller goes on, not only once it yields to the loop."""
        proto = self.proto
        future = self._send(proto, args)
        proto.write_if_idle()
        return future

    def _send(self, proto: _Protocol, args: tuple, lazy: bool = False, place=None) -> asyncio.Future:
        loop = self.loop
        command = hiredis.pack_command(args)  # first: one that cannot be packed must leave no answer awaited
        future = loop.create_future() if place is None else place
        deadline = loop.time() + self.timeout
        proto.pending.append((future, deadline))
        if proto.watch is None:
            proto.watch = loop.call_at(deadline, self._watch, proto)
        proto.buffer.append(command)
        if not lazy:
            proto.urgent = True
            if proto.soon is None:
                proto.soon = loop.call_soon(proto.flush)
        elif proto.soon is None and proto.later is None:
            proto.later = loop.call_later(LAZY_S, proto.write)
        return future

    async def call(self, *args, lazy: bool = False):
        if self.proto is None or self.proto.lost:
            await self.connect()
        return await self.send(*args, lazy=lazy)

    async def script(self, script: Script, keys: list, args: list, lazy: bool = False):
        """EVALSHA; the first time on a connection EVAL, which loads the script as it runs it: one
        round trip, and the calls after it (EVALSHA) are answered in order behind it."""
        if self.proto is None or self.proto.lost:
            await self.connect()
        if script.sha not in self.proto.scripts:
            self.proto.scripts.add(script.sha)
            return await self.send("EVAL", script.text, len(keys), *keys, *args, lazy=lazy)
        return await self._evalsha(self.proto, script, keys, args, lazy)

    def start(self, script: Script, keys: list, args: list) -> asyncio.Future | None:
        """The script's answer's future, its command written at once when no write waits for an
        answer (else gathered, as a call is): the caller goes on with its work while Redis answers
        (the limits' reservation, while the upstream request is built). None, and nothing sent, when
        the connection is not open or has not loaded the script (script() does both)."""
        proto = self._loaded(script)
        if proto is None:
            return None
        future = self._evalsha(proto, script, keys, args)
        proto.write_if_idle()
        return future

    def _evalsha(self, proto: _Protocol, script: Script, keys: list, args: list, lazy: bool = False):
        """EVALSHA's future, sent whole again should Redis have lost the script (_Whole)."""
        future = self.loop.create_future()
        self._send(proto, ("EVALSHA", script.sha, len(keys), *keys, *args), lazy,
                   place=_Whole(future, self, proto, (script, keys, args)))
        return future

    def _loaded(self, script: Script) -> _Protocol | None:
        """The open connection, if it has loaded the script."""
        proto = self.proto
        return proto if proto is not None and not proto.lost and script.sha in proto.scripts else None

    def post(self, script: Script, keys: list, args: list, then, *payload) -> bool:
        """The script run with nobody awaiting it (a settlement): written lazily, as a lazy call is,
        and its answer or failure given to then(answer, error, *payload). False, and nothing sent,
        when the connection is not open or has not loaded the script (script() does both)."""
        proto = self._loaded(script)
        if proto is None:
            return False
        proto.buffer.append(hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args)))
        deadline = self.loop.time() + self.timeout  # a Redis that stops answering fails it like a call
        proto.pending.append((_Posted(then, payload), deadline))
        if proto.watch is None:
            proto.watch = self.loop.call_at(deadline, self._watch, proto)
        if proto.soon is None and proto.later is None:
            proto.later = self.loop.call_later(LAZY_S, proto.write)
        return True

    async def connect(self):
        started = self.loop.time()
        async with self.lock:
            if self.proto is not None and not self.proto.lost:
                return
            if self.failed_at >= started:  # failed while this caller waited: not again at once
                raise ConnectionError(self.failure)
            try:
                self.proto = await self._open_in_time()
            except BaseException as exc:
                self.proto = None
                self.failed_at, self.failure = self.loop.time(), f"Redis connection failed ({type(exc).__name__})"
                raise

    async def _open_in_time(self) -> _Protocol:
        """_open(), failed once connect_timeout has passed and the loop has turned CONNECT_TURNS
        times: a busy loop's few long turns are not a Redis that does not answer."""
        task = self.loop.create_task(self._open())
        deadline, turns = self.loop.time() + self.connect_timeout, 0
        try:
            while not task.done():
                await asyncio.wait((task,), timeout=max(0.0, deadline - self.loop.time()) or 0.01)
                turns += 1
                if not task.done() and turns >= CONNECT_TURNS and self.loop.time() >= deadline:
                    raise TimeoutError("Redis connection timed out")
            return task.result()
        finally:
            if not task.done():
                task.cancel()

    async def _open(self) -> _Protocol:
        if self.path:
            _, proto = await self.loop.create_unix_connection(_Protocol, self.path)
        else:
            _, proto = await self.loop.create_connection(
                _Protocol, self.host, self.port, ssl=self.tls)
        try:  # not self.proto until set up: a call written between AUTH and SELECT would run in database 0
            if self.password:
                await self._send(proto, ("AUTH", *((self.username,) if self.username else ()), self.password))
            if self.db:
                await self._send(proto, ("SELECT", self.db))
        except BaseException:
            proto.transport.abort()
            raise
        return proto

    def _watch(self, proto: _Protocol, replies: int = -1, turns: int = 0):
        """The connection's timer: re-armed for the oldest call still waited for (awaited or posted),
        or, that call late, the connection failed unless Redis answered something while it looked again."""
        proto.watch = None
        if proto.lost:
            return
        oldest = next(((at, due) for at, (future, due) in enumerate(proto.pending) if not future.done()), None)
        if oldest is None:
            return  # nothing waited for: the next call arms it again
        loop = self.loop
        if oldest[0] >= len(proto.pending) - len(proto.buffer) and proto.unanswered <= 0:
            # not written yet, and nothing written waits for an answer: a busy loop's turn, not Redis'
            # silence (when written calls are unanswered, the gated write waits on Redis: it counts)
            proto.watch = loop.call_at(loop.time() + self.timeout, self._watch, proto)
            return
        due = max(oldest[1], proto.extended)
        if loop.time() < due:  # (also when the late call was answered or given up meanwhile)
            proto.watch = loop.call_at(due, self._watch, proto)
        elif replies < 0:  # late: what has arrived unread decides, two turns from now
            proto.watch = loop.call_soon(self._watch, proto, proto.replies, 1)
        elif turns:
            proto.watch = loop.call_soon(self._watch, proto, replies, turns - 1)
        elif proto.replies != replies:  # Redis is answering, the queue is long: another timeout
            proto.extended = loop.time() + self.timeout
            proto.watch = loop.call_at(proto.extended, self._watch, proto)
        else:
            proto.timed_out = True
            proto.transport.abort()  # connection_lost fails every call waiting on it

    def close(self):
        if self.proto is not None:
            self.proto.transport.close()


_pipes: dict = {}  # (event loop, url) -> its Pipe


def loop_pipe(url: str) -> Pipe:
    """The running event loop's Pipe to url, made once: the limits and the MetaCache on one Redis
    share its connection, so a request's reservation and lookup go in one write and one answer."""
    loop = asyncio.get_running_loop()
    pipe = _pipes.get((loop, url))
    if pipe is None:
        for gone in [key for key in _pipes if key[0].is_closed()]:
            del _pipes[gone]
        pipe = _pipes[loop, url] = Pipe(url, TIMEOUT_S, CONNECT_TIMEOUT_S)
    return pipe
