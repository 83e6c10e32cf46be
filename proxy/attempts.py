"""The upstream attempts of one request under a routing policy: which targets, in which order,
retried and failed over how (CONTRACT "Routing policies"). Both the one-body and the streamed
path go through here; a request without a policy never does.

Each target gets its own Call: the request translated for its provider through the internal
form (an Anthropic client's own body goes as it is to Anthropic targets), the model translated
to the same tier unless the target names one. The client sees its own format and model.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field

from django.conf import settings

from . import routing, upstream
from .providers import PROVIDERS
from .providers.base import SHAPE_ERRORS, ClientError, StreamState, UpstreamError, malformed
from .routing_policies import spec
from .routing_policies.breaker import OPEN, PROBE
from .routing_policies.breaker import current as breaker
from .routing_policies.budget import budget

log = logging.getLogger(__name__)

# What an UpstreamError without an HTTP status stands for, as a failover condition.
_CONDITION_BY_KIND = {"timeout": "timeout", "unavailable": "connect", "overloaded": 529, "rate_limited": 429,
                      "auth": 401, "bad_request": 400, "not_found": 404, "too_large": 413}


@dataclass(frozen=True)
class Hop:
    """A target resolved for this request."""

    route: routing.Route
    weight: float

    @property
    def key(self) -> str:
        return f"{self.route.provider}/{self.route.upstream_model}"


@dataclass
class Plan:
    policy: spec.Policy
    hops: list[Hop]
    arm: str | None
    native: object  # formats.anthropic_request.NativeBody, or None
    native_provider: str | None
    headers: dict[str, str]
    keys: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def first_route(self, model: str) -> routing.Route:
        if not self.hops:
            raise ClientError(f"No target of routing policy '{self.policy.name}' can serve model '{model}': "
                              f"{'; '.join(self.notes)}.", status=403, param="model", code="model_not_allowed")
        return self.hops[0].route


def plan(policy: spec.Policy, chat: dict, headers: dict[str, str], principal, tiers: routing.TierTable,
         native, native_provider: str | None, keys: dict[str, str]) -> Plan:
    """The policy's targets for this request, in the order they are tried."""
    client_model = chat["model"]
    hops, notes = [], []
    for target in policy.targets:
        try:
            if target.model:
                route = routing.Route(target.provider, target.model, client_model, None,
                                      reason=f"policy {policy.name}: {target.provider}/{target.model}")
            else:
                route = routing.route(client_model, target.provider, tiers)
        except ClientError as err:
            notes.append(f"{target.provider}: skipped ({err.message})")
            continue
        if not keys.get(route.provider) and route.provider != "ollama":
            notes.append(f"{route.provider}: skipped (no API key configured)")
            continue
        if not principal.may_use(route.upstream_model):
            notes.append(f"{target.provider}/{route.upstream_model}: skipped (not allowed for team "
                         f"'{principal.team}')")
            continue
        hops.append(Hop(route, target.weight))
    arm = None
    if policy.strategy == "weighted" and any(h.weight > 0 for h in hops):
        body = native.body if native is not None else chat  # an Anthropic client's own body has its metadata
        key = spec.sticky_key(body, headers) if policy.sticky == "user" else None
        first = spec.draw([h.weight for h in hops], spec.point_for(policy, key))
        hops.insert(0, hops.pop(first))
        arm = hops[0].key
        notes.append(f"arm {arm} drawn by weight" + (" (sticky caller)" if key else ""))
    elif policy.strategy == "cheapest":
        tokens_in, tokens_out = spec.estimated_tokens(chat)
        hops.sort(key=lambda h: spec.price_usd(h.route.provider, h.route.upstream_model, tokens_in, tokens_out))
    return Plan(policy, hops, arm, native, native_provider, headers, keys, notes)


def condition(err: UpstreamError) -> int | str:
    """The failover condition a failure is: an HTTP status, "timeout" or "connect"."""
    if err.upstream_status:
        return err.upstream_status
    return _CONDITION_BY_KIND.get(err.kind, 502)


def note(trace, route: routing.Route, status, ms: float, error: str = "") -> None:
    trace.fields["routing"]["chain"].append({"provider": route.provider, "model": route.upstream_model,
                                             "status": status, "ms": round(ms, 3), "error": error[:500] or None})


class Attempts:
    """Walks a plan: yields each Call to try, and decides after each failure what comes next."""

    def __init__(self, call, trace, is_stream: bool):
        self.first, self.trace = call, trace
        # A stream's trace adds up its waits itself; a one-body answer's "upstream_total" stage
        # covers all its attempts and pauses already.
        self.adds_waits = is_stream
        self.plan: Plan = call.plan
        self.policy = self.plan.policy
        self.deadline = time.monotonic() + settings.SMARTFLOW_ROUTING_TIMEOUT
        self.last_error: UpstreamError | None = None
        self.skipped: list[str] = []
        self.tries = 0  # retries of the current target so far
        self.again = False  # whether the current target is tried again
        self.probing = False  # the current attempt is its circuit's one probe

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    async def calls(self):
        """(hop index, Call, is_probe) for each attempt; after a failure the caller says what it was
        through failed(), which may end the current target's tries."""
        from .gateway import target_call

        for index, hop in enumerate(self.plan.hops):
            state = await breaker().check(hop.key)
            if state == OPEN:
                self.skipped.append(hop.key)
                self.plan.notes.append(f"{hop.key}: circuit open, skipped")
                continue
            try:
                call = self.first if index == 0 else target_call(self.first, hop.route)
            except (ClientError, UpstreamError) as err:  # no key, or the request cannot be sent there
                self.plan.notes.append(f"{hop.key}: skipped ({err})")
                self.last_error = self.last_error or (err if isinstance(err, UpstreamError) else None)
                continue
            budget.attempted(hop.key)
            self.tries = 0
            self.again = True
            while self.again and self.remaining() > 0:
                self.again, self.probing = False, state == PROBE
                yield index, call, self.probing
                state = None
                self.tries += 1

    async def failed(self, hop: Hop, err: UpstreamError, started: float):
        """Notes the attempt; raises when the failure must reach the client; else sets whether to retry
        this target (after the backoff) or go on to the next."""
        if self.adds_waits:
            self.trace.upstream_s += time.perf_counter() - started
        cause = condition(err)
        note(self.trace, hop.route, cause, (time.perf_counter() - started) * 1000, str(err))
        self.last_error = err
        is_condition = cause in self.policy.failover_on and cause not in spec.NEVER_FAILOVER
        if self.probing and not is_condition:  # it answered: whatever the answer, it is up again
            await breaker().succeeded(hop.key)
        if cause in spec.ALWAYS_FAILOVER:
            self.plan.notes.append(f"{hop.key}: the provider refused the gateway's key ({cause}), failed over")
            return
        if not is_condition:
            raise err
        await breaker().failed(hop.key)
        if self.tries >= self.policy.attempts or await breaker().check(hop.key) == OPEN:
            self.plan.notes.append(f"{hop.key}: {cause} after {self.tries + 1} attempt(s), failed over")
            return
        # Exponential backoff with full jitter; the upstream's Retry-After when it asks for longer.
        delay = random.uniform(0, self.policy.backoff_ms / 1000 * 2 ** self.tries)
        if err.retry_after is not None:
            delay = max(delay, float(err.retry_after))
        if delay >= self.remaining():
            self.plan.notes.append(f"{hop.key}: a retry would outlast the request's time, failed over")
            return
        if not budget.may_retry(hop.key):
            self.plan.notes.append(f"{hop.key}: retry budget spent, failed over")
            return
        paused = time.perf_counter()
        await asyncio.sleep(delay)
        if self.adds_waits:
            self.trace.upstream_s += time.perf_counter() - paused
        self.again = True

    async def succeeded(self, index: int, call, is_probe: bool, ms: float):
        hop = self.plan.hops[index]
        note(self.trace, hop.route, 200, ms)
        if is_probe:
            await breaker().succeeded(hop.key)
        if call is not self.first:
            self.first.adopt(call)
        record = self.trace.fields["routing"]
        record["fallback_used"] = index > 0
        self.first.attempts = len(record["chain"])
        self.trace.set(provider=hop.route.provider, upstream_model=hop.route.upstream_model)

    def give_up(self) -> UpstreamError:
        if self.last_error is not None:
            return self.last_error
        if not self.skipped:
            return UpstreamError("timeout", f"Routing policy '{self.policy.name}': no time was left for an attempt "
                                 f"(SMARTFLOW_ROUTING_TIMEOUT, {settings.SMARTFLOW_ROUTING_TIMEOUT:g} s).")
        return UpstreamError("unavailable", f"Every target of routing policy '{self.policy.name}' is skipped: "
                             f"circuit open for {', '.join(self.skipped)}. Try again in about 30 s.")

    def close(self):
        self.trace.fields["routing"]["reason"] = "; ".join(filter(None, [self.first.route.reason, *self.plan.notes]))
        self.first.attempts = len(self.trace.fields["routing"]["chain"])


async def send(call, trace) -> upstream.Reply:
    """The one-body answer of the first target that gives one."""
    await call.pass_gate()  # before the walk: a refusal is the answer, whichever target would serve
    walk = Attempts(call, trace, is_stream=False)
    try:
        async with aclosing(walk.calls()) as calls:
            async for index, candidate, is_probe in calls:
                started = time.perf_counter()
                try:
                    reply = await upstream.send(candidate.provider, candidate.request, walk.remaining())
                except UpstreamError as err:
                    await walk.failed(walk.plan.hops[index], err, started)
                    continue
                await walk.succeeded(index, candidate, is_probe, (time.perf_counter() - started) * 1000)
                return reply
        raise walk.give_up()
    finally:
        walk.close()


def has_content(chunks: list[dict]) -> bool:
    """Whether the upstream produced something of an answer (after which nothing fails over)."""
    for chunk in chunks:
        for choice in chunk.get("choices", ()):
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls") or delta.get("refusal") or choice.get("finish_reason"):
                return True
    return False


async def stream(relay, start_response):
    """Opens the stream of the first target that starts one with real content, holding its first
    events back until then (an error may come inside a 200 stream's first events); then the relay
    streams the rest unbuffered. Returns the relay's in-band failure, if any."""
    await relay.call.pass_gate()
    walk = Attempts(relay.call, relay.trace, is_stream=True)
    try:
        async with aclosing(walk.calls()) as calls:
            async for index, candidate, is_probe in calls:
                started = time.perf_counter()
                stack = AsyncExitStack()
                try:
                    ttfb, events = await stack.enter_async_context(
                        upstream.stream(candidate.provider, candidate.request, walk.remaining()))
                    held, state = await _hold(candidate.provider, events)
                except UpstreamError as err:
                    await stack.aclose()
                    await walk.failed(walk.plan.hops[index], err, started)
                    continue
                except BaseException:
                    await stack.aclose()
                    raise
                held_s = time.perf_counter() - started
                await walk.succeeded(index, candidate, is_probe, held_s * 1000)
                async with stack:
                    return await relay.pump(ttfb, held_s - ttfb, events, start_response, held, state)
        raise walk.give_up()
    finally:
        walk.close()


async def _hold(provider, events) -> tuple[list, StreamState]:
    """The stream's events up to the first with real content (or its end), parsed."""
    held, state = [], StreamState()
    async for event in events:
        try:
            chunks = provider.parse_stream_event(event, state)
        except SHAPE_ERRORS as exc:
            raise malformed(provider.name, "stream event", exc) from exc
        held.append((event, chunks))
        if has_content(chunks):
            break
    return held, state
