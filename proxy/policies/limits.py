"""Budgets and rate limits: reserve before the call, settle to what was used after.

Runs after the guardrails and before the cache: a cache hit counts against the request rate, and its
token and budget reservations are released in the log phase (nothing was used).

Request phase (one counters call, atomic; on Redis it is not waited for here but left in flight as
the call's gate, passed before the cache's phase or just before the provider is called; a busy
key's request is admitted from its slices, proxy/limits/slices.py, with no call at all): rpm
counts the request; tpm refuses when the prompt estimate alone exceeds what is left of the minute
and holds prompt + output cap; a budget refuses when the period's spend (settled plus held) has
reached the cap and holds the worst case cost (of the dearest target a routing policy may fail
over to). Redis holds expire if never settled; settlements Redis misses are retried; failing
open, budgets start from the spend Redis last answered. The key's own limits and its team's are separate counters, both checked: the
tighter decides. Log phase: the holds are swapped for the provider's usage and the cost of what
served (the trace's provider and model), off the request path: posted to Redis with the next write,
nobody awaiting it.
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
from dataclasses import dataclass
from functools import partial

from django.conf import settings

from proxy import limits
from proxy.limits import counters as store
from proxy.limits.counters import Counter, CountersDown, Refused
from proxy.limits import tokens
from proxy.limits.tokens import estimate_prompt, output_cap
from proxy.providers.base import ClientError

from . import Exchange, Policy

log = logging.getLogger(__name__)
MAX_ROWS = 10_000  # keys' counter rows kept per process
_HEADERS = {kind: (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}") for kind in ("requests", "tokens")}
IN_FLIGHT_RETRY_S = 5  # a budget held (not spent) by requests in flight: soon free again


@dataclass
class Held:
    backend: object
    counters: list[Counter]
    kinds: list[tuple[str, str]]  # ("requests", "tokens" or "spend"; "key" or "team"), one per counter
    held: list[int]
    prompt: int = 0
    spend_keys: tuple[str, ...] = ()  # spend counted without a budget (the team's spent_usd)
    spend_ttl: int = 0
    hold_id: str = ""  # the holds' id in Redis (they expire unless settled)
    unlimited: tuple | None = None  # (key id, team id, period): no limit at all, spend keys made if it cost
    answer: object = None  # the future of Redis' answer to the reservation, while the request goes on
    when: tuple = ()  # (window, now, rollover): what a refusal tells


class LimitsPolicy(Policy):
    name = "limits"

    def __init__(self):
        self.rows: dict[tuple, tuple] = {}  # (key, team, limits, window, period) -> its counters' rows
        threading.Thread(target=_preload_tokenizer, name="limits-tokenizer", daemon=True).start()

    async def request(self, ex: Exchange) -> None:
        principal = ex.principal
        if principal.is_master or principal.team_id is None:
            return None
        lim: limits.Limits = principal.limits
        if not lim.any:  # the common case: only the spend is counted, after the answer
            ex.state["limits"] = Held(None, [], [], [], unlimited=(principal.key_id, principal.team_id, lim.period))
            return None
        call = ex.call
        now = limits.clock()
        prompt = cap = 0
        if lim.has_tokens or lim.has_budget:
            if not tokens.is_loaded():
                await asyncio.to_thread(tokens.encoding)
            sent = call.request.body if call.is_native else call.chat  # what the provider gets
            prompt = estimate_prompt(sent)
            cap = output_cap(sent, settings.SMARTFLOW_LIMITS_DEFAULT_OUTPUT_TOKENS)
        window = int(now // limits.WINDOW_S)
        period_id, rollover = limits.period_of(lim.period, now)
        worst = 0
        if lim.has_budget:
            worst = self._worst_case(call, principal, prompt, cap)
        rows, kinds, spend_keys, period_ttl = self._rows(principal, lim, window, period_id)
        amounts = {"tokens": (prompt, prompt + cap, 0), "spend": (1, worst, 0)}
        counters = [same or Counter(key, limit, *amounts[kind], ttl) for key, limit, kind, ttl, same in rows]
        backend = store.current()
        held = Held(backend, counters, kinds, None, prompt, spend_keys, period_ttl, ex.trace.id,
                    when=(window, now, rollover))
        held.answer = backend.start(counters, held.hold_id)
        if held.answer is None or held.answer.done():  # (done: a busy key's slices covered it)
            return await self._check(ex, held)
        # Redis answers while the request goes on (the rest of the chain, the upstream request built):
        # the gate is passed before the next policy runs or the provider is called.
        ex.state["limits"] = held  # its holds settled in the log phase, even if the gate is never passed
        ex.call.gate = partial(self._check, ex, held)
        return None

    async def _check(self, ex: Exchange, held: Held) -> None:
        """The reservation's outcome: its holds kept and their headers set, or its refusal raised."""
        principal, counters, kinds, backend = ex.principal, held.counters, held.kinds, held.backend
        try:
            try:
                if held.answer is not None:
                    results = await backend.finish(counters, held.answer, held.hold_id)
                else:
                    results = await backend.reserve(counters, held.hold_id)
            except CountersDown:
                ex.state.pop("limits", None)  # nothing reserved on Redis
                if settings.SMARTFLOW_LIMITS_FAIL != "open":
                    raise ClientError("Rate limits cannot be checked right now (the limits store is "
                                      "unavailable); retry shortly.", status=503, type="api_error",
                                      code="limits_unavailable", retry_after=1) from None
                self._seed(backend, counters, kinds)
                backend = store.local  # fail open: served, counted in this process
                results = await backend.reserve(counters)
        except Refused as refused:
            ex.state.pop("limits", None)
            ex.out.update(self._headers(counters, kinds, None, refused))
            kind, who = kinds[refused.index]
            err = self._refusal(principal, counters[refused.index], kind, who, refused, held.prompt, *held.when)
            if err.retry_after is None or err.retry_after > 60:
                ex.out["x-should-retry"] = "false"  # the SDKs' own retries would only be refused again
            raise err from None
        finally:
            ex.trace.stage("limits")
        held.backend, held.held = backend, [h for h, _ in results]
        ex.state["limits"] = held  # settled in the log phase, whatever happens next
        ex.out.update(self._headers(counters, kinds, results, None))

    def _rows(self, principal, lim: limits.Limits, window: int, period_id: str):
        """(key, limit, kind, ttl, the Counter itself when every request has the same: rpm's) of each
        counter a key's request counts against in this window and period, the (kind, scope) of each,
        the spend keys counted without a budget and their ttl: the same for every request of the key
        in a window, so made once per key and window."""
        prefix = limits.key_prefix()
        cached = (principal.key_id, principal.team_id, lim, window, period_id, prefix)
        found = self.rows.get(cached)
        if found is not None:
            return found
        window_ttl, period_ttl = 2 * limits.WINDOW_S, limits.period_ttl(lim.period)
        rows, kinds, spend_keys = [], [], []
        for who, scope, rpm, tpm, budget in (
                ("key", f"k{principal.key_id}", lim.key_rpm, lim.key_tpm, lim.key_budget),
                ("team", f"t{principal.team_id}", lim.team_rpm, lim.team_tpm, lim.team_budget)):
            base = f"{prefix}:{scope}"
            if rpm is not None:
                key = f"{base}:r:{window}"
                rows.append((key, rpm, "requests", window_ttl, Counter(key, rpm, 1, 0, 1, window_ttl)))
                kinds.append(("requests", who))
            if tpm is not None:
                rows.append((f"{base}:t:{window}", tpm, "tokens", window_ttl, None))
                kinds.append(("tokens", who))
            spend = limits.spend_key(scope, period_id, prefix)
            if budget is not None:
                rows.append((spend, limits.nano(budget), "spend", period_ttl, None))
                kinds.append(("spend", who))
            else:
                spend_keys.append(spend)
        if len(self.rows) >= MAX_ROWS:  # keys carry their window: old ones are dropped wholesale
            self.rows.clear()
        found = self.rows[cached] = (rows, kinds, tuple(spend_keys), period_ttl)
        return found

    @staticmethod
    def _worst_case(call, principal, prompt: int, cap: int):
        """The dearest cost (nano-USD) of any target the request may be served by (a routing policy's later
        targets too). Unpriced targets are refused (the first) or skipped (later ones, noted in
        the routing reason) unless SMARTFLOW_LIMITS_ALLOW_UNPRICED: a budget never serves free."""
        allow = settings.SMARTFLOW_LIMITS_ALLOW_UNPRICED
        price = call.prices.lookup(call.route.provider, call.route.upstream_model)
        if price is None and not allow:
            raise ClientError(f"Model '{call.route.upstream_model}' has no price in the price table, and "
                              f"team '{principal.team}' has a budget. Ask the operator to price it (admin: "
                              "Model prices) or to set SMARTFLOW_LIMITS_ALLOW_UNPRICED.",
                              status=403, param="model", code="model_unpriced")
        worst = price.worst_case_nano(prompt, cap) if price else 0
        plan = call.plan
        if plan is None:
            return worst
        kept = plan.hops[:1]
        for hop in plan.hops[1:]:
            price = call.prices.lookup(hop.route.provider, hop.route.upstream_model)
            if price is None and not allow:
                plan.notes.append(f"{hop.key}: skipped (unpriced, and team '{principal.team}' has a budget)")
                continue
            kept.append(hop)
            worst = max(worst, price.worst_case_nano(prompt, cap) if price else 0)
        plan.hops[:] = kept
        return worst

    @staticmethod
    def _seed(shared, counters, kinds):
        """Failing open, a budget is checked here from the spend Redis last answered this process
        (its own settlements since added): never served past it. A budget it never read is
        refused until Redis answers again (rates stay this process's own meanwhile)."""
        budgets = [c for c, (kind, _) in zip(counters, kinds) if kind == "spend"]
        if not budgets:
            return
        known = shared.last_used([c.key for c in budgets])
        if len(known) < len(budgets):
            raise ClientError("The budget cannot be checked right now (the limits store is unavailable "
                              "and this gateway process has not read this period's spend yet); retry shortly.",
                              status=503, type="api_error", code="limits_unavailable", retry_after=1)
        store.local.seed(known, {c.key: c.ttl for c in budgets})

    @staticmethod
    def _headers(counters, kinds, results, refused) -> dict[str, str]:
        """OpenAI's x-ratelimit-* for the tighter (least remaining) of key and team."""
        best: dict[str, tuple[int, int]] = {}
        for i, (counter, (kind, _)) in enumerate(zip(counters, kinds)):
            if kind == "spend":
                continue
            if results is not None:
                remaining = counter.limit - results[i][1]
            elif refused.index == i:
                remaining = counter.limit - refused.current
            else:
                continue
            remaining = max(0, remaining)
            if kind not in best or remaining < best[kind][1]:
                best[kind] = (counter.limit, remaining)
        headers = {}
        for kind, (limit, remaining) in best.items():
            names = _HEADERS[kind]
            headers[names[0]] = str(limit)
            headers[names[1]] = str(remaining)
        return headers

    @staticmethod
    def _refusal(principal, counter: Counter, kind: str, scope: str, refused: Refused, prompt: int,
                 window: int, now: float, rollover: float | None) -> ClientError:
        current = refused.current
        who = f"key {principal.key_prefix}…" if scope == "key" else f"team '{principal.team}'"
        window_wait = max(1, math.ceil((window + 1) * limits.WINDOW_S - now))
        if kind == "requests":
            return ClientError(f"Rate limit reached for {who}: {counter.limit} requests per minute. "
                               f"Retry in {window_wait} s.", status=429, type="rate_limit_error",
                               code="rate_limit_exceeded", retry_after=window_wait)
        if kind == "tokens":
            if prompt > counter.limit:
                return ClientError(f"The prompt (about {prompt} tokens) is larger than the whole token limit "
                                   f"of {who} ({counter.limit} tokens per minute): shorten it.", status=429,
                                   type="rate_limit_error", code="rate_limit_exceeded")
            return ClientError(f"Token rate limit reached for {who}: {counter.limit} tokens per minute, "
                               f"{max(0, counter.limit - current)} left, this prompt is about {prompt}. "
                               f"Retry in {window_wait} s.", status=429, type="rate_limit_error",
                               code="rate_limit_exceeded", retry_after=window_wait)
        cap = limits.usd(counter.limit)
        if refused.used < counter.limit:  # not spent: held by requests in flight, free again when they settle
            return ClientError(f"Budget of {who} (${cap}) is reserved by requests in flight: "
                               f"${limits.usd(refused.used)} spent, the rest held for answers not yet complete. "
                               f"Retry in {IN_FLIGHT_RETRY_S} s.", status=429, type="rate_limit_error",
                               code="budget_exceeded", retry_after=IN_FLIGHT_RETRY_S)
        when = (f"It renews in {math.ceil(rollover)} s (the period rolls over at 00:00 UTC)."
                if rollover is not None else "It is a total budget: ask the operator to raise it.")
        return ClientError(f"Budget exceeded for {who}: ${cap} spent. {when}",
                           status=429, type="rate_limit_error", code="budget_exceeded",
                           retry_after=None if rollover is None else max(1, math.ceil(rollover)))

    def log(self, ex: Exchange) -> None:
        held = ex.state.get("limits")
        if held is None:  # the master key, refused, or failed before the limits
            return
        if held.held is None:  # the request ended before it waited for Redis (no upstream call): its
            held.answer.add_done_callback(partial(self._unwaited, held))  # holds go when Redis answers
            return
        self._settle(held, *used(ex.trace, held.prompt))

    def _unwaited(self, held: Held, answer):
        results = held.backend.outcome(held.counters, answer)
        if results is not None:
            held.held = [h for h, _ in results]
            self._settle(held, 0, 0)

    @staticmethod
    def _settle(held: Held, tokens: int, cost: int):
        """The holds swapped for what was used (tokens, nano-USD), the spend counted."""
        items, untracked = [], []  # reserved under the hold id first (Redis counts those once)
        for counter, (kind, _), amount in zip(held.counters, held.kinds, held.held):
            if kind != "requests":
                (items if counter.hold > 0 else untracked).append(
                    (counter.key, amount, tokens if kind == "tokens" else cost, counter.ttl))
        tracked = len(items)
        items += untracked
        if cost and held.unlimited:
            key_id, team_id, period = held.unlimited
            period_id = limits.period_of(period, limits.clock())[0]
            items += [(limits.spend_key(scope, period_id), 0, cost, limits.period_ttl(period))
                      for scope in (f"k{key_id}", f"t{team_id}")]
        elif cost:
            items += [(key, 0, cost, held.spend_ttl) for key in held.spend_keys]
        if not items:
            return
        store.settle_soon(held.backend or store.current(), items, held.hold_id, tracked)


def _preload_tokenizer():
    """The tokenizer (0.3 s, ~40 MiB) loaded off the loop at start-up when some team or key has a
    token or budget limit; else the first request under one loads it (on a thread too)."""
    from django.db import connection
    from django.db.models import Q

    from proxy.models import Team, VirtualKey

    limited = Q(tpm_limit__isnull=False) | Q(budget_cap_usd__isnull=False)
    try:
        if Team.objects.filter(limited).exists() or VirtualKey.objects.filter(limited).exists():
            tokens.encoding()
    except Exception:  # no database yet (migrations, tests): the first limited request loads it
        log.debug("limits: tokenizer not preloaded", exc_info=True)
    finally:
        connection.close()  # this thread's own


def used(trace, prompt_estimate: int) -> tuple[int, int]:
    """(tokens, nano-USD) the request really used, from its trace: the provider's usage and the
    cost of what served. Not called upstream (a cache hit, a refusal): nothing. Cut short before
    the provider reported usage (cancelled, a stream that broke): the prompt estimate plus the
    output the trace counted, at the served model's price."""
    fields = trace.fields
    if not any(stage["name"].startswith("upstream") for stage in trace.stages) or fields.get("cache") == "hit":
        return 0, 0
    tokens_in, tokens_out = fields.get("tokens_input") or 0, fields.get("tokens_output") or 0
    if tokens_in:
        return tokens_in + tokens_out, limits.nano(fields.get("cost_usd") or 0)
    if fields.get("status_code") != 499 and not tokens_out:
        return 0, 0  # the provider refused or failed before working on it: nothing billed
    from proxy import prices

    price = prices.lookup(fields.get("provider") or "", fields.get("upstream_model") or "")
    cost = price.cost({"prompt_tokens": prompt_estimate, "completion_tokens": tokens_out}) if price else 0
    return prompt_estimate + tokens_out, limits.nano(cost)
