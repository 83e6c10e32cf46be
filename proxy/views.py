"""Proxy endpoints. The chat endpoints are a lean ASGI handler (the hot path skips
Django's request cycle); /health and /v1/models are ordinary Django views."""
import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse

from traces.recorder import recorder
from traces.trace import Trace

from . import gateway, policies, routing
from .asgi_http import read_request, send_response, start_stream
from .auth import authenticate, authenticate_sync, key_from_headers
from .cache.store import current as metacache_store
from .errors import openai_error
from .limits import counters as limit_counters
from .formats import ANTHROPIC, OPENAI
from .policies import Exchange
from .providers.base import ClientError, UpstreamError
from .scrub import describe

log = logging.getLogger(__name__)


async def handle(client_format, scope, receive, send):
    """One chat request in the client's format: auth, parse, route, policies, call, answer, trace."""
    trace = Trace(client_format.endpoint)
    chain = policies.chain()
    call = ex = None
    try:
        request = await read_request(scope, receive, settings.SMARTFLOW_MAX_BODY_BYTES,
                                     settings.SMARTFLOW_BODY_TIMEOUT_SECONDS)
        principal = await authenticate(request.headers)
        trace.set(key_prefix=principal.key_prefix, team=principal.team or "")
        trace.stage("auth")
        chat, native = client_format.parse(request.body)
        trace.set(prompt=chat["messages"], stream=bool(chat.get("stream")), client_model=chat["model"])
        ex = Exchange(client_format, request.headers, principal, trace)
        # A policy may need the translated path (guardrails read and redact the prompt).
        native_ok = native is None or not chain.passthroughs or await chain.passthrough(ex)
        call = ex.call = await gateway.prepare(chat, request.headers, principal, trace, native,
                                               client_format.native_provider if native_ok else None)
        answer = await chain.request(ex) if chain.requests else None
        if answer is not None:
            return await answer_from_policy(ex, chain, answer, send)
        if call.is_stream:
            return await relay(ex, chain, receive, send)
        await reply(ex, chain, receive, send)
    except (ClientError, UpstreamError) as err:
        await fail(client_format, send, trace, call, err, ex)
    except ConnectionAbortedError:
        trace.set(status_code=499, error="client disconnected before sending the whole body")
    except Exception as err:  # never a traceback to the client; the log and trace keep the cause
        log.exception("chat request failed")  # the logging filter scrubs keys from the traceback
        trace.set(error=describe(err))
        await fail(client_format, send, trace, call, RuntimeError(f"Internal gateway error; see trace {trace.id}."),
                   ex)
    finally:
        if ex is not None and chain.logs:
            try:
                chain.log(ex)
            except Exception:  # a policy's bookkeeping never costs the request its trace
                log.exception("a policy's log phase failed")
        recorder.add(trace.record())


def _headers(ex: Exchange | None, call, trace) -> dict[str, str]:
    return gateway.response_headers(call, trace, ex.out if ex is not None else None)


async def fail(client_format, send, trace, call, err, ex=None):
    status, body, headers = client_format.error(err)
    trace.set(status_code=status)
    if not trace.fields.get("error"):
        trace.set(error=str(err))
    await send_response(send, status, body, {**_headers(ex, call, trace), **headers})


async def reply(ex: Exchange, chain: policies.Chain, receive, send):
    """Answers in one body; a client that goes away first cancels the upstream call."""
    call, trace = ex.call, ex.trace
    with gateway.DisconnectWatch(receive) as watch:
        try:
            response = await gateway.complete(call, trace)
            if chain.responses:
                await chain.response(ex, response)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            trace.stage("upstream_total", upstream=True)
            trace.set(status_code=499, error="cancelled: the client disconnected before the answer; "
                                             "the upstream request was cancelled")
            return
    response = call.native_reply() if call.is_native else ex.client_format.respond(response, call.chat["model"])
    await send_response(send, 200, orjson.dumps(response), _headers(ex, call, trace))


async def relay(ex: Exchange, chain: policies.Chain, receive, send):
    """Streams the answer; a client that goes away cancels the upstream call."""
    call, trace = ex.call, ex.trace
    relay = gateway.StreamRelay(call, trace, send, ex.client_format, ex, chain)

    async def start_response():
        await start_stream(send, _headers(ex, call, trace))

    with gateway.DisconnectWatch(receive) as watch:
        try:
            await relay.run(start_response)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            relay.finish(499, "cancelled: the client disconnected mid-stream; the upstream request was cancelled")


async def answer_from_policy(ex: Exchange, chain: policies.Chain, answer: policies.Answer, send):
    """A policy's own answer (a cache hit) in the client's format, streamed when the client asked.

    Written in one go: the client is never waiting on anyone, so a disconnect needs no watch."""
    call, trace = ex.call, ex.trace
    usage = answer.response.get("usage") or {}
    trace.set(status_code=200, tokens_input=usage.get("prompt_tokens") or 0,
              tokens_output=usage.get("completion_tokens") or 0, cost_usd=0)
    base = {"id": f"chatcmpl-{trace.id}", "created": int(time.time()), "model": call.route.client_model}
    if call.is_stream:
        writer = ex.client_format.stream(call.chat, {**base, "object": "chat.completion.chunk"})
        parts = [writer.start()]
        for chunk in answer.chunks():
            chunk = chain.chunk(ex, chunk) if chain.chunks else chunk
            if chunk is not None:
                parts.append(writer.chunk(chunk))
        parts.append(writer.end(answer.response.get("usage")))
        trace.set(response={**base, "object": "chat.completion", **answer.response})
        await start_stream(send, _headers(ex, call, trace))
        await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})
        return
    response = {**base, "object": "chat.completion", **answer.response}
    if chain.responses:  # the answer is checked as a fresh one would be (rules may have changed)
        await chain.response(ex, response)
    trace.set(response=response)
    body = ex.client_format.respond(response, call.route.client_model)
    await send_response(send, 200, orjson.dumps(body), _headers(ex, call, trace))


PROXY_ROUTES = {
    ("POST", "/v1/chat/completions"): partial(handle, OPENAI),
    ("POST", "/v1/messages"): partial(handle, ANTHROPIC),
}


def _check_database():
    connection.close_if_unusable_or_obsolete()  # a database that came back gets a new connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_cache():
    cache.set("smartflow:health", "ok", 5)
    return cache.get("smartflow:health") == "ok"


def _check_limits():
    return limit_counters.current().status()["ok"] if settings.SMARTFLOW_LIMITS else True


def _check_metacache():
    if settings.SMARTFLOW_CACHE == "off":
        return True
    return metacache_store().status()["ok"]


# Health checks run in their own threads, one check of each kind at a time: a dependency that
# hangs answers "timeout" here without piling up threads the rest of the gateway needs.
_health_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
_health_running: dict = {}


async def _probe(check) -> dict:
    future = _health_running.get(check)
    if future is None or future.done():
        future = _health_running[check] = _health_pool.submit(check)
    waiting = asyncio.wrap_future(future)
    done, _ = await asyncio.wait([waiting], timeout=settings.SMARTFLOW_HEALTH_TIMEOUT)
    if not done:
        waiting.cancel()  # the check itself runs on; the next probe waits for it again
        return {"ok": False, "error": "timeout"}
    if waiting.exception() is not None:
        return {"ok": False, "error": type(waiting.exception()).__name__}
    return {"ok": waiting.result() is not False}


async def health(request):
    """200 while the gateway can serve, naming each degraded dependency; 503 when it cannot.

    It cannot serve without its database: keys and teams could not be checked. Redis (the
    cache, shared counters) being down or the trace writer falling behind degrade it, but
    proxying goes on, so a load balancer must not pull the node (nor every node at once).
    """
    database, cache_state, metacache, limits = await asyncio.gather(
        _probe(_check_database), _probe(_check_cache), _probe(_check_metacache), _probe(_check_limits))
    database["engine"] = connection.vendor
    cache_state["backend"] = "redis" if settings.REDIS_URL else "in-process"
    traces = recorder.status()
    traces["ok"] = not traces["last_failure"] and (
        traces["backlog"] <= settings.SMARTFLOW_TRACE_BACKLOG_MAX // 2
        and traces["backlog_bytes"] <= settings.SMARTFLOW_TRACE_BACKLOG_BYTES // 2)
    metacache.update(backend=metacache_store().backend, mode=settings.SMARTFLOW_CACHE)
    # Rate limits and budgets: shared in Redis, or (no Redis, or Redis down and failing open) per process.
    limits.update(backend="redis" if settings.REDIS_URL else "in-process", on_failure=settings.SMARTFLOW_LIMITS_FAIL)
    parts = {"database": database, "cache": cache_state, "metacache": metacache, "limits": limits,
             "traces": traces}
    degraded = [name for name, part in parts.items() if not part["ok"]]
    status = "unavailable" if not database["ok"] else "degraded" if degraded else "ok"
    return JsonResponse({"status": status, "degraded": degraded, **parts}, status=503 if not database["ok"] else 200)


async def models(request):
    principal = await sync_to_async(authenticate_sync)(key_from_headers(
        {k.lower(): v for k, v in request.headers.items()}))
    if principal is None:
        status, body = openai_error(401, "Invalid or missing API key. Send 'Authorization: Bearer sk-sf-…'.",
                                    code="invalid_api_key")
        return JsonResponse(orjson.loads(body), status=status)
    tiers = await routing.table.get()
    # What the key is served under each name: a restricted team's own names (also those the table
    # lacks), else the table; a name is listed when the model it routes to is allowed.
    names = principal.allowed_models or tiers.entries
    data = []
    for name in sorted(set(names)):
        try:
            route = routing.route(name, None, tiers)
        except ClientError:
            continue  # no provider serves this name by itself
        if principal.may_use(route.upstream_model):
            data.append({"id": name, "object": "model", "created": 0, "owned_by": route.provider})
    return JsonResponse({"object": "list", "data": data})
