"""The only module that talks to providers over HTTP: one shared pooled client.

httpx is the API; its own connection pool degrades under concurrency, so the
transport is aiohttp's (httpx-aiohttp), which holds up (see the core issue's
measurements and bench/).
"""
import asyncio
import contextvars
import errno
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import aiohttp
import httpx
import orjson
from django.conf import settings
from httpx_aiohttp import AiohttpTransport

from .providers.base import Provider, UpstreamError, UpstreamRequest, malformed
from .sse import iter_events


class _Connector(aiohttp.TCPConnector):
    """Counts the connections it opens: a call during which none was opened ran on a pooled one."""

    opened = 0

    async def _create_connection(self, req, traces, timeout):
        protocol = await super()._create_connection(req, traces, timeout)
        _Connector.opened += 1
        return protocol


_gate: contextvars.ContextVar = contextvars.ContextVar("gate", default=None)


async def _after_gate(request, handler):
    """aiohttp's middleware: the call's gate (a policy's check in flight, see post_json) is passed
    once aiohttp has built the request, before a connection is taken or a byte sent."""
    gate = _gate.get()
    if gate is not None:
        # Cleared first: a connection opened below copies this context into its reader callback,
        # and would keep the call (its prompt, its body with the provider's key) as long as it lives.
        _gate.set(None)
        await gate()
    return await handler(request)


class UpstreamClient(httpx.AsyncClient):
    """The shared client. Provider calls go straight to its transport.

    They never use cookies, auth flows, redirects or event hooks, and httpx's
    client layer around them (URL merging, cookie extraction, header merging)
    was the largest cost on the hot path (bench/README.md); the URL objects are
    parsed once per provider endpoint.
    """

    def __init__(self):
        limits = httpx.Limits(max_connections=settings.SMARTFLOW_UPSTREAM_MAX_CONNECTIONS,
                              max_keepalive_connections=settings.SMARTFLOW_UPSTREAM_MAX_CONNECTIONS)
        timeout = httpx.Timeout(settings.SMARTFLOW_UPSTREAM_TIMEOUT,
                                connect=settings.SMARTFLOW_UPSTREAM_CONNECT_TIMEOUT)
        transport = AiohttpTransport(limits=limits, client=self._session)
        super().__init__(transport=transport, timeout=timeout)
        self._timeout_ext = timeout.as_dict()
        self._urls: dict[str, httpx.URL] = {}

    @staticmethod
    def _session() -> aiohttp.ClientSession:
        connector = _Connector(limit=settings.SMARTFLOW_UPSTREAM_MAX_CONNECTIONS,
                               limit_per_host=0, keepalive_timeout=30)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                     middlewares=(_after_gate,))

    async def post_json(self, url: str, headers: dict[str, str], body: dict, gate=None) -> httpx.Response:
        """Sends the request and returns once the headers are in; the body streams.

        A call that failed without reaching the provider is sent once more. gate: an async callable
        awaited (once passed, a no-op) after the request is built and before it is sent, whose
        exception (a refusal) is raised as it is: Redis answers a reservation meanwhile.
        """
        if gate is not None:
            token = _gate.set(gate)
            try:
                return await self.post_json(url, headers, body)
            finally:
                _gate.reset(token)
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) > 1000:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        request = httpx.Request("POST", parsed, headers=headers, content=orjson.dumps(body),
                                extensions={"timeout": self._timeout_ext})
        opened = _Connector.opened
        try:
            return await self._transport.handle_async_request(request)
        except httpx.TransportError as exc:
            if not _never_sent(exc.__cause__, pooled=_Connector.opened == opened):
                raise
        return await self._transport.handle_async_request(request)


_RESET = (errno.ECONNRESET, errno.EPIPE)


def _never_sent(cause: BaseException | None, pooled: bool) -> bool:
    """Whether a failed call is safe to send again: it did not reach the provider.

    Either no connection could be opened, or a pooled connection was closed or
    reset before a byte of an answer, which is what the provider closing it (its
    keep-alive ran out) just as the call reused it looks like. A fresh connection
    failing so may have carried a request the provider took: not sent again.
    """
    if isinstance(cause, aiohttp.ClientConnectorError):
        return True
    if not pooled:
        return False
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return isinstance(cause.message, str)  # else aiohttp put the part of an answer it got there
    return isinstance(cause, aiohttp.ClientOSError) and cause.errno in _RESET


_client: UpstreamClient | None = None


def client() -> UpstreamClient:
    global _client
    if _client is None:
        _client = UpstreamClient()
    return _client


async def close():
    global _client
    if _client is not None:
        await _client.aclose()
        _client = None


@dataclass
class Reply:
    status: int
    body: object  # parsed JSON, or text when the upstream did not send JSON
    ttfb_s: float


def _decode(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")[:2000]


def _failure(provider: Provider, exc: Exception) -> UpstreamError:
    """A transport failure, told as what happened.

    httpx-aiohttp maps every aiohttp connection error to ConnectTimeout (a refused
    or dropped connection too), so the aiohttp exception it chains is what tells.
    """
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) and exc.__cause__ else exc
    name = provider.name
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return UpstreamError("timeout", f"{name}: could not connect to the provider within "
                             f"{settings.SMARTFLOW_UPSTREAM_CONNECT_TIMEOUT:g} s.")
    if isinstance(cause, (TimeoutError, httpx.TimeoutException)):  # ours, or aiohttp's read timeout
        return UpstreamError("timeout", f"{name}: no complete answer within the timeout "
                             f"({settings.SMARTFLOW_UPSTREAM_TIMEOUT:g} s).")
    if isinstance(cause, aiohttp.ClientConnectorError):
        return UpstreamError("unavailable", f"{name}: could not connect to the provider "
                             f"({type(cause.os_error).__name__}). Check SMARTFLOW_{name.upper()}_BASE_URL.")
    if isinstance(cause, aiohttp.ClientPayloadError):
        return UpstreamError("bad_response", f"{name}: the answer was cut off: the connection broke in the "
                             "middle of it.")
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return UpstreamError("unavailable", f"{name}: the provider closed the connection without answering.")
    if getattr(cause, "errno", None) in _RESET:
        return UpstreamError("unavailable", f"{name}: the provider reset the connection.")
    return UpstreamError("unavailable", f"{name}: the call to the provider failed ({type(cause).__name__}).")


async def send(provider: Provider, req: UpstreamRequest, timeout: float | None = None, gate=None) -> Reply:
    """A non-streaming call; raises UpstreamError for transport failures and HTTP errors.

    timeout: seconds left for it (a routing policy's later attempts), at most the setting's.
    gate: passed before the request is sent (post_json)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(_seconds(timeout)):
            response = await client().post_json(req.url, req.headers, req.body, gate)
            ttfb = time.perf_counter() - started
            try:
                raw = await response.aread()
            finally:
                await response.aclose()
    except (httpx.HTTPError, OSError) as exc:  # TimeoutError is an OSError
        raise _failure(provider, exc) from exc
    body = _decode(raw)
    if response.status_code >= 400:
        raise provider.classify_error(response.status_code, body, dict(response.headers))
    if not isinstance(body, dict):
        raise UpstreamError("bad_response", f"{provider.name}: the provider answered with a body that is not a "
                            "JSON object.", upstream_status=response.status_code)
    return Reply(response.status_code, body, ttfb)


def _seconds(timeout: float | None) -> float:
    limit = settings.SMARTFLOW_UPSTREAM_TIMEOUT
    return limit if timeout is None else max(0.0, min(timeout, limit))


@asynccontextmanager
async def stream(provider: Provider, req: UpstreamRequest, timeout: float | None = None, gate=None):
    """A streaming call: yields (ttfb seconds, async iterator of parsed events).

    HTTP errors before the body raise UpstreamError; failures while reading
    raise UpstreamError from the iterator. The total timeout covers the whole
    stream. Leaving the block (for example when the client went away) closes
    the upstream connection, which cancels the provider's generation.
    """
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + _seconds(timeout)
    async with AsyncExitStack() as stack:
        try:
            async with asyncio.timeout_at(deadline):
                response = await client().post_json(req.url, req.headers, req.body, gate)
                stack.push_async_callback(response.aclose)
                if response.status_code >= 400:
                    body = _decode(await response.aread())
                    raise provider.classify_error(response.status_code, body, dict(response.headers))
        except (httpx.HTTPError, OSError) as exc:  # TimeoutError is an OSError
            raise _failure(provider, exc) from exc
        events = iter_events(response.aiter_bytes(), provider.stream_format)
        yield time.perf_counter() - started, _guard(provider, events, deadline)


async def _guard(provider: Provider, events, deadline: float):
    """Parsed events, with transport failures and the deadline turned into UpstreamError."""
    iterator = events.__aiter__()
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                event = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except (httpx.HTTPError, OSError) as exc:
            raise _failure(provider, exc) from exc
        except orjson.JSONDecodeError as exc:
            raise malformed(provider.name, "stream event", exc) from exc
        if not isinstance(event, dict):
            raise malformed(provider.name, "stream event", TypeError(f"{type(event).__name__}, not an object"))
        yield event
