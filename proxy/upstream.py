"""The only module that talks to providers over HTTP: one shared pooled client.

httpx is the API; its own connection pool degrades under concurrency, so the
transport is aiohttp's (httpx-aiohttp), which holds up (see the core issue's
measurements and bench/).
"""
import asyncio
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import aiohttp
import httpx
import orjson
from django.conf import settings
from httpx_aiohttp import AiohttpTransport

from .providers.base import Provider, UpstreamError, UpstreamRequest
from .sse import iter_events

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
        connector = aiohttp.TCPConnector(limit=settings.SMARTFLOW_UPSTREAM_MAX_CONNECTIONS,
                                         limit_per_host=0, keepalive_timeout=30)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def post_json(self, url: str, headers: dict[str, str], body: dict) -> httpx.Response:
        """Sends the request and returns once the headers are in; the body streams."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) > 1000:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        request = httpx.Request("POST", parsed, headers=headers, content=orjson.dumps(body),
                                extensions={"timeout": self._timeout_ext})
        return await self._transport.handle_async_request(request)


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
    # httpx-aiohttp reports a refused connection as ConnectTimeout; the cause tells.
    refused = isinstance(exc.__cause__, aiohttp.ClientConnectorError) and not isinstance(
        exc.__cause__, aiohttp.ServerTimeoutError)
    if not refused and isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
        return UpstreamError("timeout", f"{provider.name}: no answer within the timeout "
                             f"({settings.SMARTFLOW_UPSTREAM_TIMEOUT:g} s).")
    return UpstreamError("unavailable", f"{provider.name}: could not reach the provider "
                         f"({type(exc).__name__}). Check SMARTFLOW_{provider.name.upper()}_BASE_URL.")


async def send(provider: Provider, req: UpstreamRequest) -> Reply:
    """A non-streaming call; raises UpstreamError for transport failures and HTTP errors."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.SMARTFLOW_UPSTREAM_TIMEOUT):
            response = await client().post_json(req.url, req.headers, req.body)
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
        raise UpstreamError("server", f"{provider.name}: the provider answered with a body that is not JSON.",
                            upstream_status=response.status_code)
    return Reply(response.status_code, body, ttfb)


@asynccontextmanager
async def stream(provider: Provider, req: UpstreamRequest):
    """A streaming call: yields (ttfb seconds, async iterator of parsed events).

    HTTP errors before the body raise UpstreamError; failures while reading
    raise UpstreamError from the iterator. The total timeout covers the whole
    stream. Leaving the block (for example when the client went away) closes
    the upstream connection, which cancels the provider's generation.
    """
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + settings.SMARTFLOW_UPSTREAM_TIMEOUT
    async with AsyncExitStack() as stack:
        try:
            async with asyncio.timeout_at(deadline):
                response = await client().post_json(req.url, req.headers, req.body)
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
            raise UpstreamError("server", f"{provider.name}: the stream carried an event that is not JSON.") from exc
        yield event
