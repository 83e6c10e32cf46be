"""Proxy endpoints. The chat endpoint is a lean ASGI handler (the hot path skips
Django's request cycle); /health and /v1/models are ordinary Django views."""
import asyncio
import logging

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse

from traces.recorder import recorder
from traces.trace import Trace

from . import gateway, routing
from .asgi_http import read_request, send_response, start_stream
from .auth import authenticate, authenticate_sync, key_from_headers
from .errors import from_client_error, from_upstream_error, openai_error
from .providers.base import ClientError, UpstreamError
from .validation import parse_chat

log = logging.getLogger(__name__)


async def chat_completions(scope, receive, send):
    trace = Trace("chat.completions")
    call = None
    try:
        request = await read_request(scope, receive, settings.SMARTFLOW_MAX_BODY_BYTES)
        principal = await authenticate(request.headers)
        trace.set(key_prefix=principal.key_prefix, team=principal.team or "")
        trace.stage("auth")
        chat = parse_chat(request.body)
        trace.set(prompt=chat["messages"], stream=bool(chat.get("stream")), client_model=chat["model"])
        call = await gateway.prepare(chat, request.headers, principal, trace)
        if call.is_stream:
            return await relay(call, trace, receive, send)
        body = orjson.dumps(await gateway.complete(call, trace))
        await send_response(send, 200, body, gateway.response_headers(call, trace))
    except ClientError as err:
        await fail(send, trace, call, *from_client_error(err), err.message, err.retry_after)
    except UpstreamError as err:
        await fail(send, trace, call, *from_upstream_error(err), err.message, err.retry_after)
    except ConnectionAbortedError:
        trace.set(status_code=499, error="client disconnected before sending the whole body")
    except Exception as err:  # never a traceback to the client; the trace keeps the cause
        log.exception("chat completion failed")
        await fail(send, trace, call, *openai_error(500, "Internal gateway error; see the trace "
                   f"{trace.id}.", "api_error", code="internal_error"), repr(err), None)
    finally:
        recorder.add(trace.record())


async def fail(send, trace, call, status, body, message, retry_after):
    trace.set(status_code=status, error=message)
    headers = gateway.response_headers(call, trace)
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    await send_response(send, status, body, headers)


async def relay(call, trace, receive, send):
    """Streams the answer; a client that goes away cancels the upstream call."""
    relay = gateway.StreamRelay(call, trace, send)
    task = asyncio.current_task()
    gone = []
    watcher = None

    async def start_response():
        nonlocal watcher
        await start_stream(send, gateway.response_headers(call, trace))
        watcher = asyncio.ensure_future(gateway.watch_disconnect(receive, lambda: (gone.append(1), task.cancel())))

    try:
        await relay.run(start_response)
    except asyncio.CancelledError:
        if not gone:
            raise
        relay.finish(499, "client disconnected mid-stream; upstream request cancelled")
        trace.set(status_code=499)
    finally:
        if watcher is not None:
            watcher.cancel()


PROXY_ROUTES = {("POST", "/v1/chat/completions"): chat_completions}


async def health(request):
    def check_db():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    def check_cache():
        cache.set("smartflow:health", "ok", 5)
        return cache.get("smartflow:health") == "ok"

    result = {}
    for name, check in (("database", check_db), ("cache", check_cache)):
        try:
            ok = await sync_to_async(check)()
            result[name] = {"ok": ok is not False}
        except Exception as exc:
            result[name] = {"ok": False, "error": type(exc).__name__}
    result["database"]["engine"] = connection.vendor
    result["cache"]["backend"] = "redis" if settings.REDIS_URL else "in-process"
    healthy = all(v["ok"] for v in result.values())
    return JsonResponse({"status": "ok" if healthy else "degraded", **result}, status=200 if healthy else 503)


async def models(request):
    principal = await sync_to_async(authenticate_sync)(key_from_headers(
        {k.lower(): v for k, v in request.headers.items()}))
    if principal is None:
        status, body = openai_error(401, "Invalid or missing API key. Send 'Authorization: Bearer sk-sf-…'.",
                                    code="invalid_api_key")
        return JsonResponse(orjson.loads(body), status=status)
    tiers = await routing.table.get()
    data = [{"id": name, "object": "model", "created": 0, "owned_by": entry.provider}
            for name, entry in sorted(tiers.entries.items()) if principal.may_use(name)]
    return JsonResponse({"object": "list", "data": data})
