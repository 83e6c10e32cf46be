"""The only module that talks to providers over HTTP: one shared pooled client.

httpx is the API; the transport is our own (proxy/transport.py): httpx's pool degrades under
concurrency, and aiohttp's beneath httpx cost twice as much a call (bench/transport_cost.py).
"""
import asyncio
import time
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx
import orjson
from django.conf import settings

from .providers.base import Provider, UpstreamError, UpstreamRequest, malformed
from .sse import iter_events
from .transport import CutOff, NoAnswer, Transport


class UpstreamClient(httpx.AsyncClient):
    """The shared client. Provider calls go straight to its transport.

    They never use cookies, auth flows, redirects or event hooks, and httpx's
    client layer around them (URL merging, cookie extraction, header merging)
    was the largest cost on the hot path (bench/README.md); the URL objects are
    parsed once per provider endpoint.
    """

    def __init__(self):
        timeout = httpx.Timeout(settings.SMARTFLOW_UPSTREAM_TIMEOUT,
                                connect=settings.SMARTFLOW_UPSTREAM_CONNECT_TIMEOUT)
        transport = Transport(max_connections=settings.SMARTFLOW_UPSTREAM_MAX_CONNECTIONS, keepalive_s=30)
        super().__init__(transport=transport, timeout=timeout)
        self._timeout_ext = timeout.as_dict()
        self._urls: dict[str, httpx.URL] = {}

    async def post_json(self, url: str, headers: dict[str, str], body: dict, gate=None,
                        deadline: float | None = None) -> httpx.Response:
        """Sends the request and returns once the headers are in; the body streams.

        gate: an async callable awaited after the request is built and before it is sent, whose
        exception (a refusal) is raised as it is: Redis answers a reservation meanwhile. deadline:
        the loop time by which the body must be whole (reading it later raises httpx.ReadTimeout).
        """
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) > 1000:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        if parsed.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the URL's scheme is not http or https: {parsed.scheme!r}")
        request = httpx.Request("POST", parsed, headers=headers, content=orjson.dumps(body),
                                extensions={"timeout": self._timeout_ext, "deadline": deadline})
        if gate is not None:
            await gate()
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


def _chunks(response: httpx.Response):
    """The body as the transport hands it over; through httpx's decoders only when the provider
    compressed it (none is asked to: Response.aread() cost 20 us a call more, for nothing)."""
    return response.aiter_bytes() if "content-encoding" in response.headers else response.stream


MAX_ANSWER_BYTES = 64 * 1024 * 1024  # an answer read whole (not a stream): a broken provider's cannot fill memory


class _TooLarge(httpx.ReadError):
    pass


async def _read(response: httpx.Response) -> bytes:
    chunks, size = [], 0
    async for chunk in _chunks(response):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _TooLarge(f"over {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")[:2000]


def _failure(provider: Provider, exc: Exception) -> UpstreamError:
    """A transport failure, told as what happened (the transport's exceptions: transport.py)."""
    name, cause = provider.name, exc.__cause__
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamError("timeout", f"{name}: could not connect to the provider within "
                             f"{settings.SMARTFLOW_UPSTREAM_CONNECT_TIMEOUT:g} s.")
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return UpstreamError("timeout", f"{name}: no complete answer within the timeout "
                             f"({settings.SMARTFLOW_UPSTREAM_TIMEOUT:g} s).")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError("unavailable", f"{name}: could not connect to the provider "
                             f"({type(cause).__name__}). Check SMARTFLOW_{name.upper()}_BASE_URL.")
    if isinstance(exc, _TooLarge):
        return UpstreamError("bad_response", f"{name}: the answer is larger than the gateway reads "
                             f"({MAX_ANSWER_BYTES // 2**20} MiB).")
    if isinstance(exc, CutOff):
        return UpstreamError("bad_response", f"{name}: the answer was cut off: the connection broke in the "
                             "middle of it.")
    if isinstance(exc, NoAnswer):
        if isinstance(cause, ConnectionResetError):
            return UpstreamError("unavailable", f"{name}: the provider reset the connection.")
        return UpstreamError("unavailable", f"{name}: the provider closed the connection without answering.")
    return UpstreamError("unavailable", f"{name}: the call to the provider failed ({type(exc).__name__}).")


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
                raw = await _read(response)
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
                response = await client().post_json(req.url, req.headers, req.body, gate, deadline)
                stack.push_async_callback(response.aclose)
                if response.status_code >= 400:
                    body = _decode(await _read(response))
                    raise provider.classify_error(response.status_code, body, dict(response.headers))
        except (httpx.HTTPError, OSError) as exc:  # TimeoutError is an OSError
            raise _failure(provider, exc) from exc
        events = iter_events(_chunks(response), provider.stream_format)
        yield time.perf_counter() - started, _guard(provider, events)


async def _guard(provider: Provider, events):
    """Parsed events, with transport failures and the deadline (the transport's) turned into UpstreamError."""
    iterator = events.__aiter__()
    while True:
        try:
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
