"""The MetaCache policy: answers a request from a stored answer, or stores the fresh one.

Keyed on the internal (OpenAI) form after parsing and before provider translation, so both
client formats asking the same thing of the same upstream model share an entry. Native
Anthropic pass-through requests (an Anthropic client served by Anthropic) are not cached
(BYPASS): their bodies and answers may hold constructs the internal form lacks (thinking
blocks, server tools, citations), which an entry in the internal form would silently drop.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import orjson
from django.conf import settings

from proxy.cache import keys
from proxy.cache import store as stores
from proxy.redis_pipe import in_background
from proxy.providers.base import ClientError

from . import Answer, Exchange, Policy

log = logging.getLogger(__name__)


@dataclass
class CacheState:
    outcome: str = "bypass"
    key: str = ""
    ttl: int = 0
    store: bool = False
    scope: str = ""  # semantic mode: where the entry is indexed
    lookup: bool = False
    started: object = None  # the lookup's answer, sent ahead (lookahead)
    meta: dict = field(default_factory=dict)


def storable(response: dict) -> bool:
    """A complete answer: every choice finished, every tool call's arguments whole JSON."""
    choices = response.get("choices")
    if not choices:
        return False
    for choice in choices:
        if not choice.get("finish_reason"):
            return False
        for call in (choice.get("message") or {}).get("tool_calls") or ():
            try:
                orjson.loads((call.get("function") or {}).get("arguments") or "")
            except orjson.JSONDecodeError:
                return False
    return True


class CachePolicy(Policy):
    name = "cache"

    def __init__(self, mode: str, store=None, semantic=None):
        self.mode = mode
        self._store, self._semantic = store, semantic
        if mode == "semantic" and semantic is None:
            from proxy.cache.semantic import embedder

            embedder.warm()  # the model loads on its own thread now, not in the first request

    @property
    def store(self):
        return self._store or stores.current()

    @property
    def semantic(self):
        if self.mode != "semantic":
            return None
        if self._semantic is not None:
            return self._semantic
        from proxy.cache.semantic import index

        return index()

    def lookahead(self, ex: Exchange) -> None:
        """The Redis lookup sent before the guardrails and the limits run: it is answered meanwhile."""
        store = self.store
        if store.backend != "redis" or ex.call.is_native:
            return
        try:
            state = self._prepare(ex)
        except ClientError:  # a bad cache header: the request phase answers it, in its turn
            return
        if state is not None:
            state.started = store.start_get(state.key) if state.lookup else None
            ex.state["cache_ahead"] = state

    def _prepare(self, ex: Exchange) -> CacheState | None:
        """The entry's key and what to do with it; None when the request neither looks up nor stores."""
        call = ex.call
        lookup, store, ttl = keys.parse_controls(ex.headers)
        if not (lookup or store):
            return None
        state = CacheState(lookup=lookup)
        team = str(ex.principal.team_id or "")  # the caller's key decides the team, never a header
        provider, model = call.route.provider, call.route.upstream_model
        if call.plan is not None:  # any of the policy's targets may serve it: one entry for them all
            provider, model = f"policy:{call.plan.policy.name}", call.route.client_model
        state.key = keys.cache_key(team, provider, model, call.chat)
        state.ttl = ttl or settings.SMARTFLOW_CACHE_TTL
        # A stream is assembled from one merged message; with n > 1 it cannot be stored faithfully.
        state.store = store and state.ttl > 0 and not (call.is_stream and (call.chat.get("n") or 1) > 1)
        if self.mode == "semantic":
            state.scope = keys.semantic_scope(team, provider, model, call.chat)
        return state

    async def request(self, ex: Exchange) -> Answer | None:
        ahead = ex.state.pop("cache_ahead", None)
        ex.state["cache"] = CacheState()
        ex.out["x-smartflow-cache"] = "BYPASS"
        if ex.call.is_native:
            return None
        state = self._prepare(ex)
        if state is None:
            return None
        if ahead is not None and ahead.key == state.key:  # else the guardrails redacted the prompt
            state.started = ahead.started
        ex.state["cache"] = state
        try:
            answer = await self._lookup(ex, state) if state.lookup else None
        except stores.StoreDown:
            state.store = False
            return None
        finally:
            ex.trace.stage("cache")
        if answer is None:
            state.outcome = "miss"
            ex.out["x-smartflow-cache"] = "MISS"
        return answer

    async def _lookup(self, ex: Exchange, state: CacheState) -> Answer | None:
        key, similarity = state.key, None
        started, state.started = state.started, None
        raw = await (self.store.get(key) if started is None else self.store.get(key, started))
        semantic = self.semantic
        if raw is None and semantic is not None:  # exact first, then by meaning
            try:
                found = await semantic.search(state.scope, keys.conversation_text(ex.call.chat))
            except Exception:  # the index failing is a miss, never a failed request
                log.exception("MetaCache: the semantic search failed")
                found = None
            if found is not None:
                key, similarity = found
                raw = await self.store.get(key)
        if raw is None:
            return None
        entry = orjson.loads(raw)
        age = max(0, int(time.time() - entry["stored_at"]))
        state.outcome, state.store = "hit", False
        state.meta = {"key": key, "age_s": age, "ttl_s": entry["ttl_s"], "saved_usd": entry["cost_usd"]}
        if similarity is not None:
            state.meta["similarity"] = round(float(similarity), 6)
        ex.out.update({"x-smartflow-cache": "HIT", "age": str(age)})
        return Answer(entry["response"])

    async def response(self, ex: Exchange, response: dict) -> None:
        state = ex.state.get("cache")
        if state is None or not state.store or not storable(response):
            return
        entry = {"response": {"choices": response["choices"], "usage": response.get("usage")},
                 "stored_at": time.time(), "ttl_s": state.ttl,
                 "cost_usd": float(ex.trace.fields.get("cost_usd") or 0)}
        store, value = self.store, orjson.dumps(entry)
        if store.backend == "redis" and self.mode == "exact":  # the answer does not wait for Redis' round
            # trip: posted with the next write (this process's next lookup goes after it), else on a
            # task; a paraphrase needs the semantic index, awaited below.
            if not store.post_put(state.key, value, state.ttl):
                in_background(self._put(store, state, ex.call.chat, value))
        else:
            await self._put(store, state, ex.call.chat, value)

    async def _put(self, store, state: CacheState, chat: dict, value: bytes):
        try:
            await store.put(state.key, value, state.ttl)
            semantic = self.semantic
            if semantic is not None:
                await semantic.add(state.scope, keys.conversation_text(chat), state.key, state.ttl)
        except stores.StoreDown:
            pass  # the answer went out; it is just not cached
        except Exception:
            log.exception("MetaCache: storing an answer failed")

    def log(self, ex: Exchange) -> None:
        state = ex.state.get("cache")
        if state is not None:
            ex.trace.set(cache=state.outcome, cache_meta=(state.meta or {"key": state.key}) if state.key else {})
