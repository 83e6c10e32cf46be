"""Request policies: one ordered chain between parsing a request and answering it.

Modelled on Envoy's HTTP filters and Kong's plugin phases. Each policy is one module with one
class that overrides the phases it needs (the base class's are no-ops and are skipped):

- ``passthrough(ex)`` before routing, for a request its client's format could send natively (an
                    Anthropic client served by Anthropic): False makes it take the translated path,
                    so the phases below see it (a policy that must read or change the prompt).
- ``request(ex)``   before the upstream call; may change ``ex.call`` (redaction), raise a
                    ClientError (a refusal), or return an Answer (a cache hit): the upstream
                    is not called and later policies' request phases do not run.
- ``lookahead(ex)`` starts a read the policy's request phase will await (the cache's lookup),
                    before the first request phase: Redis answers it while the policies before
                    run. Shows the client and the trace nothing; its read is dropped when an
                    earlier policy refuses. It reads the call as it is then: the policy's request
                    phase checks that what it read still holds (an earlier policy may have changed
                    the call: the guardrails redact the prompt, so the cache's key would be stale).
- A request phase may leave a check in flight instead of waiting for it: ``ex.call.gate``, an
                    async callable (the limits' reservation, while Redis answers). It is passed
                    before the next policy's request phase, before a policy's answer is sent, and
                    otherwise just before the provider is called (once the upstream client has
                    built the request): the gateway's own work overlaps the round trip. Its refusal is the
                    request's answer. A gate never passed (the request failed first) is the
                    policy's to clean up in its log phase.
- ``chunk(ex, c)``  each chunk of a streamed answer, in the internal OpenAI chunk form, before
                    the client's format writes it; returns the chunk (changed or not) or None
                    (held back). A native pass-through stream (an Anthropic client served
                    by Anthropic) forwards the provider's own events: this phase does not see it.
- ``response(ex, r)`` the complete internal answer (non-streamed, or assembled from a stream that
                    finished cleanly), before its last byte is sent.
- ``log(ex)``       at the end of every request, served or not: fills the VASLog's fields
                    (cache, cache_meta, compliance, guardrails, routing).

A policy sets response headers in ``ex.headers`` (x-smartflow-cache, Age, …). A policy that is
off is not in the chain, and a phase no policy implements is an empty tuple: zero cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings


@dataclass
class Answer:
    """A policy's own answer: a complete internal (OpenAI form) chat.completion."""

    response: dict

    def chunks(self) -> list[dict]:
        """The answer as a live stream has it: per choice a role chunk, its content, its tool
        calls and its finish; the usage chunk and [DONE] are the client format's end()."""
        chunks = []
        for choice in self.response.get("choices") or ():
            index, message = choice.get("index", 0), choice.get("message") or {}
            chunks.append(_delta(index, {"role": "assistant", "content": ""}))
            if message.get("content"):
                chunks.append(_delta(index, {"content": message["content"]}))
            if message.get("refusal"):
                chunks.append(_delta(index, {"refusal": message["refusal"]}))
            for position, call in enumerate(message.get("tool_calls") or ()):
                chunks.append(_delta(index, {"tool_calls": [{"index": position, **call}]}))
            chunks.append(_delta(index, {}, choice.get("finish_reason") or "stop"))
        return chunks


def _delta(index: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}]}


@dataclass
class Exchange:
    """One request as the policies see it."""

    client_format: object
    headers: dict[str, str]  # the client's request headers (lower-case names)
    principal: object
    trace: object
    call: object = None  # gateway.Call once routed
    out: dict[str, str] = field(default_factory=dict)  # response headers set by policies
    state: dict = field(default_factory=dict)  # per-policy scratch, by policy name


class Policy:
    name = "policy"

    def lookahead(self, ex: Exchange) -> None:
        return None

    async def passthrough(self, ex: Exchange) -> bool:
        return True

    async def request(self, ex: Exchange) -> Answer | None:
        return None

    def chunk(self, ex: Exchange, chunk: dict) -> dict | None:
        return chunk

    async def response(self, ex: Exchange, response: dict) -> None:
        return None

    def log(self, ex: Exchange) -> None:
        return None


def _implements(policy: Policy, phase: str) -> bool:
    return getattr(type(policy), phase) is not getattr(Policy, phase)


class Chain:
    def __init__(self, policies: list[Policy]):
        self.policies = tuple(policies)
        self.passthroughs = tuple(p for p in policies if _implements(p, "passthrough"))
        self.requests = tuple(p for p in policies if _implements(p, "request"))
        self.lookaheads = tuple(p.lookahead for p in self.requests[1:] if _implements(p, "lookahead"))
        self.chunks = tuple(p for p in policies if _implements(p, "chunk"))
        self.responses = tuple(p for p in policies if _implements(p, "response"))
        self.logs = tuple(p for p in policies if _implements(p, "log"))

    async def passthrough(self, ex: Exchange) -> bool:
        for policy in self.passthroughs:
            if not await policy.passthrough(ex):
                return False
        return True

    async def request(self, ex: Exchange) -> Answer | None:
        call = ex.call
        for lookahead in self.lookaheads:
            lookahead(ex)
        for policy in self.requests:
            if call.gate is not None:  # an earlier policy's check, passed before this one runs
                await call.pass_gate()
            answer = await policy.request(ex)
            if answer is not None:
                await call.pass_gate()
                return answer
        return None

    def chunk(self, ex: Exchange, chunk: dict) -> dict | None:
        for policy in self.chunks:
            chunk = policy.chunk(ex, chunk)
            if chunk is None:
                return None
        return chunk

    async def response(self, ex: Exchange, response: dict) -> None:
        for policy in self.responses:
            await policy.response(ex, response)

    def log(self, ex: Exchange) -> None:
        for policy in self.logs:
            policy.log(ex)


_built: tuple | None = None


def chain() -> Chain:
    """The chain for the current settings (rebuilt only when they change)."""
    global _built
    config = (settings.SMARTFLOW_CACHE, settings.REDIS_URL, settings.SMARTFLOW_LIMITS)
    if _built is None or _built[0] != config:
        _built = (config, Chain(_policies(config)))
    return _built[1]


def _policies(config) -> list[Policy]:
    mode, _, limits = config
    from .guardrails import GuardrailsPolicy

    # Guardrails first: a cache hit never bypasses a prompt rule, the cache keys and stores what
    # they let through, and a blocked prompt takes nothing from a limit.
    policies: list[Policy] = [GuardrailsPolicy()]
    if limits:  # before the cache: a hit counts against the request rate
        from .limits import LimitsPolicy

        policies.append(LimitsPolicy())
    if mode != "off":
        from .cache import CachePolicy

        policies.append(CachePolicy(mode))
    return policies
