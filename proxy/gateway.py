"""The proxy's pipeline: route, translate, call the provider, translate back, trace."""
import asyncio
import logging
import time
from dataclasses import dataclass

from django.conf import settings

from traces.trace import Trace

from . import attempts, prices, routing, upstream
from .auth import Principal
from .keystore import provider_keys
from .providers import PROVIDERS
from .providers.base import (SHAPE_ERRORS, ClientError, Provider, StreamState, UpstreamError, UpstreamRequest,
                             malformed)
from .routing_policies import spec

log = logging.getLogger(__name__)


@dataclass
class Call:
    chat: dict
    route: routing.Route
    provider: Provider
    request: UpstreamRequest
    tiers: routing.TierTable
    prices: prices.PriceTable
    # The client speaks the serving provider's own format: its body went out as is.
    is_native: bool = False
    reply_body: dict | None = None
    plan: "attempts.Plan | None" = None  # the routing policy's targets, when one governs the request
    attempts: int = 0  # upstream calls made
    gate: object = None  # a policy's check still in flight (the limits' reservation): an async callable
    gate_s: float = 0.0  # how long the upstream call waited for it (gateway time, not the provider's)

    async def pass_gate(self):
        """Waits for the check a policy left in flight, once: raises its refusal. Nothing reaches
        the provider, nor a policy's own answer the client, before it passes."""
        gate, self.gate = self.gate, None
        if gate is None:
            return
        started = time.perf_counter()
        try:
            await gate()
        except ClientError:
            self.attempts = 0  # refused inside the upstream call: nothing was sent
            raise
        finally:
            self.gate_s = time.perf_counter() - started

    def native_reply(self) -> dict:
        return {**self.reply_body, "model": self.route.client_model}

    @property
    def is_stream(self) -> bool:
        return bool(self.chat.get("stream"))

    def adopt(self, other: "Call"):
        """Another target served: from now on this call is that one."""
        self.chat, self.route, self.provider = other.chat, other.route, other.provider
        self.request, self.is_native = other.request, other.is_native


async def prepare(chat: dict, headers: dict[str, str], principal: Principal, trace: Trace,
                  native=None, native_provider: str | None = None) -> Call:
    """Routing and request translation (stages 'routing' and 'translation').

    native: the client's own body (formats.anthropic_request.NativeBody) when its format has a
    provider that speaks it; chat is then only what routing needs until it is translated.
    """
    tiers = await routing.table.get()
    override = headers.get("x-smartflow-provider")
    plan = None
    if override is None:  # the header pins the provider: no policy applies
        policy = spec.select(await spec.snapshot.get(), headers.get("x-smartflow-policy") or None, principal,
                             chat["model"])
        if policy is not None:
            plan = attempts.plan(policy, chat, headers, principal, tiers, native, native_provider,
                                 await provider_keys.get())
    route = plan.first_route(chat["model"]) if plan is not None else routing.route(chat["model"], override, tiers)
    record = route.as_record()
    if plan is not None:
        record.update(policy=plan.policy.name, strategy=plan.policy.strategy, arm=plan.arm)
    trace.set(client_model=chat["model"], provider=route.provider, upstream_model=route.upstream_model,
              routing=record)
    if not principal.may_use(route.upstream_model):
        served = "" if route.upstream_model == chat["model"] else \
            f" (routed to {route.provider}/{route.upstream_model})"
        raise ClientError(f"Model '{chat['model']}'{served} is not allowed for team '{principal.team}'. "
                          f"Allowed: {', '.join(principal.allowed_models)} (the model the provider is called "
                          "with must be one of them).", status=403, param="model", code="model_not_allowed")
    trace.stage("routing")
    keys = await provider_keys.get()
    call = build_call(chat, route, keys, headers, tiers, await prices.table.get(), native, native_provider)
    call.plan = plan
    if call.request.dropped:
        trace.fields["routing"] = dict(trace.fields["routing"], dropped_params=call.request.dropped)
    trace.stage("translation")
    return call


def build_call(chat: dict, route: routing.Route, keys: dict[str, str], headers: dict[str, str],
               tiers: routing.TierTable, price_table: prices.PriceTable, native=None,
               native_provider: str | None = None) -> Call:
    """The request translated for the provider that route names."""
    key = keys.get(route.provider)
    if not key and route.provider != "ollama":
        raise UpstreamError("auth", f"No API key is configured for {route.provider}. The operator must set "
                            f"{route.provider.upper()}_API_KEY or add the key in the admin.")
    provider = PROVIDERS[route.provider]
    base_url = settings.SMARTFLOW_BASE_URLS[route.provider]
    is_native = native is not None and native_provider == route.provider
    if is_native:
        request = provider.build_native_request(native.body, route.upstream_model, base_url, key, headers)
    else:
        if native is not None:  # the client's format is translated only now that another provider serves it
            chat = native.translate(route.provider)
        request = provider.build_request(chat, route.upstream_model, base_url, key)
    return Call(chat, route, provider, request, tiers, price_table, is_native)


def target_call(first: Call, route: routing.Route) -> Call:
    """A later target's call: what the request policies saw (the internal form) translated for it,
    or the Anthropic client's own body when it goes to Anthropic as it is."""
    plan = first.plan
    native = plan.native if first.is_native or plan.native_provider == route.provider else None
    return build_call(first.chat, route, plan.keys, plan.headers, first.tiers, first.prices, native,
                      plan.native_provider)


def response_headers(call: Call | None, trace: Trace, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The gateway's own headers, then those the policies set (x-smartflow-cache, Age, …)."""
    headers = {"x-smartflow-request-id": trace.id, "x-smartflow-cache": "BYPASS", "x-smartflow-compliance": "pass",
               "x-smartflow-overhead-ms": f"{trace.overhead_ms():.3f}"}
    if call is not None:
        headers["x-smartflow-provider"] = call.route.provider
        headers["x-smartflow-model"] = call.route.upstream_model
        headers["x-smartflow-attempts"] = str(call.attempts)
    if extra:
        headers.update(extra)
    return headers


def _account(call: Call, trace: Trace, usage: dict | None):
    """Tokens and cost from the provider's usage, priced for what served (a model without a
    price is unpriced: cost 0 stored, null shown, never a silent $0)."""
    tokens_in = (usage or {}).get("prompt_tokens") or 0
    tokens_out = (usage or {}).get("completion_tokens") or 0
    price = call.prices.lookup(trace.fields.get("provider") or call.route.provider,
                               trace.fields.get("upstream_model") or call.route.upstream_model)
    trace.set(tokens_input=tokens_in, tokens_output=tokens_out,
              cost_usd=price.cost(usage) if price else 0, unpriced=price is None)


async def _send(call: Call, trace: Trace) -> upstream.Reply:
    """The one upstream call of a request without a routing policy."""
    call.attempts = 1
    started = time.perf_counter()
    try:
        reply = await upstream.send(call.provider, call.request, gate=call.pass_gate if call.gate else None)
    except UpstreamError as err:
        attempts.note(trace, call.route, attempts.condition(err), _since(started, call), str(err))
        raise
    attempts.note(trace, call.route, 200, _since(started, call))
    reply.ttfb_s -= call.gate_s
    return reply


def _since(started: float, call: Call) -> float:
    """Milliseconds of an upstream call begun at started, without its wait for the call's gate."""
    return (time.perf_counter() - started - call.gate_s) * 1000


async def complete(call: Call, trace: Trace) -> dict:
    reply = await (_send(call, trace) if call.plan is None else attempts.send(call, trace))
    trace.stages.append({"name": "upstream_ttfb", "ms": round(reply.ttfb_s * 1000, 3)})
    trace.stage("upstream_total", upstream=True)
    call.reply_body = reply.body
    try:
        response = call.provider.parse_response(reply.body)
    except SHAPE_ERRORS as exc:
        log.warning("%s answered in an unknown shape", call.provider.name, exc_info=True)
        raise malformed(call.provider.name, "answer", exc) from exc
    response = {"id": f"chatcmpl-{trace.id}", "object": "chat.completion", "created": int(time.time()),
                **response, "model": call.route.client_model}
    _account(call, trace, response.get("usage"))
    trace.set(status_code=200, response=response)
    trace.stage("response_translation")
    return response


class StreamRelay:
    """Translates an upstream stream into the client's format, forwarding each event as it arrives."""

    def __init__(self, call: Call, trace: Trace, send, client_format, exchange=None, chain=None):
        self.call, self.trace, self.send, self.client_format = call, trace, send, client_format
        # The request policies' per-chunk and response phases (proxy/policies), when any has them.
        self.exchange = exchange
        self.chunk_hook = chain.chunk if chain is not None and chain.chunks else None
        self.response_hook = chain.response if chain is not None and chain.responses else None
        self.state = StreamState()
        self.base = {"id": f"chatcmpl-{trace.id}", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": call.route.client_model}
        self.writer = None
        self.text: list[str] = []
        self.tool_calls: dict[int, dict] = {}
        self.translate_s = 0.0

    async def run(self, start_response):
        if self.call.plan is not None:
            failure = await attempts.stream(self, start_response)
        else:
            self.call.attempts = 1
            started = time.perf_counter()
            try:
                gate = self.call.pass_gate if self.call.gate else None
                async with upstream.stream(self.call.provider, self.call.request, gate=gate) as (ttfb, events):
                    ttfb -= self.call.gate_s  # the wait for the gate is the gateway's, not the provider's
                    attempts.note(self.trace, self.call.route, 200, ttfb * 1000)
                    failure = await self.pump(ttfb, 0.0, events, start_response)
            except UpstreamError as err:
                if self.writer is None:  # before the stream began: the caller answers with the error
                    attempts.note(self.trace, self.call.route, attempts.condition(err),
                                  _since(started, self.call), str(err))
                raise
        # The upstream connection is closed by now; the last write ends the response.
        if failure is not None:
            self.fail(failure)
            await self._write(self.writer.error(failure), more=False)
        else:
            if self.response_hook is not None:  # before the last byte: the next request can hit
                _account(self.call, self.trace, self.state.usage)  # what the answer cost, for the policies
                await self.response_hook(self.exchange, self.message())
            await self._write(self.writer.end(self.state.usage), more=False)
            self.finish(200)

    async def pump(self, ttfb: float, held_s: float, events, start_response, held=(), state=None):
        """Starts the client's stream, then forwards the held events (already parsed, with the
        state they were parsed with) and the rest as they come. Returns the failure to end it with."""
        self.trace.stages.append({"name": "upstream_ttfb", "ms": round(ttfb * 1000, 3)})
        self.trace.upstream_s += ttfb + held_s
        if state is not None:
            self.state = state
        self.writer = self.client_format.stream(self.call.chat, self.base)
        await start_response()
        await self._write(self.writer.start())
        waited = time.perf_counter()
        try:
            for event, chunks in held:
                await self._forward(event, chunks)
            async for event in events:
                now = time.perf_counter()
                self.trace.upstream_s += now - waited
                try:
                    chunks = self.call.provider.parse_stream_event(event, self.state)
                except SHAPE_ERRORS as exc:
                    log.warning("%s streamed an event of unknown shape", self.call.provider.name, exc_info=True)
                    raise malformed(self.call.provider.name, "stream event", exc) from exc
                await self._forward(event, chunks)
                waited = time.perf_counter()
                self.translate_s += waited - now
            closing = self.call.provider.finish_stream(self.state)
            if not self.call.is_native:
                await self._emit(closing)
            elif closing:  # ended after message_delta without message_stop: close it the same way (§5.3)
                await self._write(self.writer.native({"type": "message_stop"}))
        except (UpstreamError, ClientError) as err:
            return err
        except Exception:  # a translation bug must still end the stream in-band
            log.exception("stream translation failed")
            return UpstreamError("server", "The gateway could not translate the stream.")
        return None

    async def _forward(self, event: dict, chunks: list[dict]):
        if self.call.is_native:
            for chunk in chunks:
                self._collect(chunk)  # for the trace; the client gets the event itself
            await self._write(self.writer.native(event))
        else:
            await self._emit(chunks)

    async def _emit(self, chunks: list[dict]):
        for chunk in chunks:
            if self.chunk_hook is not None:
                chunk = self.chunk_hook(self.exchange, chunk)
                if chunk is None:
                    continue
            self._collect(chunk)
            body = self.writer.chunk(chunk)
            if body:
                await self._write(body)

    async def _write(self, body: bytes, more: bool = True):
        if body or not more:
            await self.send({"type": "http.response.body", "body": body, "more_body": more})

    def _collect(self, chunk: dict):
        for choice in chunk.get("choices", ()):
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.text.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(call["index"], {"id": None, "type": "function",
                                                                  "function": {"name": "", "arguments": ""}})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""

    def message(self) -> dict:
        message = {"role": "assistant", "content": "".join(self.text) or None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {"choices": [{"index": 0, "message": message, "finish_reason": self.state.finish_reason}],
                "usage": self.state.usage}

    def finish(self, status: int, error: str = ""):
        self.trace.stages.append({"name": "upstream_total", "ms": round(self.trace.upstream_s * 1000, 3)})
        self.trace.stages.append({"name": "response_translation", "ms": round(self.translate_s * 1000, 3)})
        usage = self.state.usage
        if status != 200 and not (usage or {}).get("completion_tokens"):
            # Cut short before the upstream's totals: estimate what was generated (~4 chars a token).
            seen = sum(len(t) for t in self.text) + sum(len(c["function"]["arguments"])
                                                        for c in self.tool_calls.values())
            if seen:
                usage = {**(usage or {}), "completion_tokens": max(1, round(seen / 4))}
                error += " (output tokens estimated from the text received)"
        _account(self.call, self.trace, usage)
        self.trace.set(status_code=status, response=self.message(), error=error)

    def fail(self, err: Exception):
        # The status the client would have got before the stream began (a timeout is a 504).
        self.finish(self.client_format.error(err)[0], str(err))


class DisconnectWatch:
    """While in the block, a client that goes away cancels the task serving it, and with
    it the upstream call (which is billed whether or not anyone waits for the answer).

    The request body must be read already. `gone` tells this cancellation from others.
    It costs one pending receive() per request, cancelled on leaving the block.
    """

    def __init__(self, receive):
        self.receive = receive
        self.task = asyncio.current_task()
        self.gone = False
        self.waiter: asyncio.Future | None = None

    def __enter__(self) -> "DisconnectWatch":
        self._listen()
        return self

    def __exit__(self, *exc_info):
        waiter, self.waiter = self.waiter, None
        waiter.remove_done_callback(self._heard)
        waiter.cancel()
        if self.gone:
            self.task.uncancel()  # the cancellation was ours and is handled

    def _listen(self):
        self.waiter = asyncio.ensure_future(self.receive())
        self.waiter.add_done_callback(self._heard)

    def _heard(self, waiter: asyncio.Future):
        if waiter is not self.waiter or waiter.cancelled() or waiter.exception() is not None:
            return
        if waiter.result()["type"] == "http.disconnect":
            self.gone = True
            self.task.cancel()
        else:
            self._listen()
