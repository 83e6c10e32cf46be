"""Policies as data: validation, the snapshot every process reads, which policy governs a
request, and the order its targets are tried in."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import orjson
import xxhash

from proxy import prices, routing
from proxy.providers.base import ClientError
from proxy.snapshot import Snapshot

STRATEGIES = ("failover", "weighted", "cheapest")
DEFAULT_FAILOVER_ON = (429, 500, 502, 503, 504, 529, "timeout", "connect")
# Client errors never fail over (the request itself is wrong), and 401/403 always do (our key).
NEVER_FAILOVER = frozenset({400, 404, 413, 422})
ALWAYS_FAILOVER = frozenset({401, 403})
FIELDS = {"name", "strategy", "targets", "retry", "failover_on", "models", "teams", "sticky", "enabled",
          "priority"}
MAX_TARGETS = 16
MAX_ATTEMPTS = 5
MAX_BACKOFF_MS = 60_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class Invalid(ValueError):
    """A bad policy body; the message names the field."""


@dataclass(frozen=True)
class Target:
    provider: str
    model: str | None
    weight: float = 1.0


@dataclass(frozen=True)
class Policy:
    name: str
    strategy: str
    targets: tuple[Target, ...]
    attempts: int = 1
    backoff_ms: int = 250
    failover_on: frozenset = frozenset(DEFAULT_FAILOVER_ON)
    models: frozenset = frozenset()
    teams: frozenset = frozenset()
    sticky: str | None = None
    enabled: bool = True
    priority: int = 100

    def applies_to(self, team: str | None, model: str) -> bool:
        return (not self.teams or team in self.teams) and (not self.models or model in self.models)

    def may_be_used_by(self, team: str | None, is_master: bool) -> bool:
        return self.enabled and (is_master or not self.teams or team in self.teams)


def _list_of_names(data: dict, name: str) -> list[str]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 200 and "\x00" not in v
                                              for v in value) or len(value) > 1000:
        raise Invalid(f"'{name}' must be a list of at most 1000 non-empty names.")
    return sorted(set(value))


def _integer(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"'{name}' must be a whole number from {low} to {high}.")
    return value


def _target(raw, index: int) -> dict:
    where = f"targets[{index}]"
    if not isinstance(raw, dict) or set(raw) - {"provider", "model", "weight"}:
        raise Invalid(f"'{where}' must be an object with 'provider', optional 'model' and 'weight'.")
    provider = raw.get("provider")
    if provider not in routing.PROVIDER_NAMES:
        raise Invalid(f"'{where}.provider' must be one of {', '.join(routing.PROVIDER_NAMES)}.")
    model = raw.get("model")
    if model is not None:
        try:
            routing.check_model_name(model)
        except ClientError:
            raise Invalid(f"'{where}.model' is not a model name (letters, digits and . _ : / @ + -).") from None
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1_000_000:
        raise Invalid(f"'{where}.weight' must be a number from 0 to 1000000.")
    return {"provider": provider, "model": model, "weight": weight}


def validate(data, name: str | None = None) -> dict:
    """A policy body -> its normalised form (what is stored); Invalid names the bad field.

    name: the name in the URL (PUT), which the body may repeat but not change."""
    if not isinstance(data, dict):
        raise Invalid("The body must be a JSON object.")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise Invalid(f"'{unknown[0]}' is not a policy field (fields: {', '.join(sorted(FIELDS))}).")
    given = data.get("name", name)
    if not isinstance(given, str) or not _NAME.fullmatch(given):
        raise Invalid("'name' must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit.")
    if name is not None and given != name:
        raise Invalid("'name' must match the name in the URL.")
    strategy = data.get("strategy")
    if strategy not in STRATEGIES:
        raise Invalid(f"'strategy' must be one of {', '.join(STRATEGIES)}.")
    targets = data.get("targets")
    if not isinstance(targets, list) or not 1 <= len(targets) <= MAX_TARGETS:
        raise Invalid(f"'targets' must be a list of 1 to {MAX_TARGETS} targets.")
    targets = [_target(t, i) for i, t in enumerate(targets)]
    if strategy == "weighted" and not sum(t["weight"] for t in targets) > 0:
        raise Invalid("'targets' of a weighted policy need a weight above 0 between them.")
    retry = data.get("retry", {})
    if not isinstance(retry, dict) or set(retry) - {"attempts", "backoff_ms"}:
        raise Invalid("'retry' must be an object with 'attempts' and 'backoff_ms'.")
    retry = {"attempts": _integer(retry.get("attempts", 1), "retry.attempts", 0, MAX_ATTEMPTS),
             "backoff_ms": _integer(retry.get("backoff_ms", 250), "retry.backoff_ms", 0, MAX_BACKOFF_MS)}
    failover_on = data.get("failover_on", list(DEFAULT_FAILOVER_ON))
    if not isinstance(failover_on, list) or not all(
            v in ("timeout", "connect") or (isinstance(v, int) and not isinstance(v, bool)
                                            and (v == 429 or 500 <= v <= 599)) for v in failover_on):
        raise Invalid("'failover_on' must list 429, statuses from 500 to 599, 'timeout' or 'connect' (client "
                      "errors never fail over; 401 and 403 always do).")
    sticky = data.get("sticky")
    if sticky not in (None, "", "user"):
        raise Invalid("'sticky' must be \"user\" or null.")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise Invalid("'enabled' must be true or false.")
    return {"name": given, "strategy": strategy, "targets": targets, "retry": retry,
            "failover_on": sorted(set(failover_on), key=str), "models": _list_of_names(data, "models"),
            "teams": _list_of_names(data, "teams"), "sticky": sticky or None, "enabled": enabled,
            "priority": _integer(data.get("priority", 100), "priority", -1_000_000, 1_000_000)}


def from_dict(d: dict) -> Policy:
    return Policy(d["name"], d["strategy"], tuple(Target(t["provider"], t.get("model"), float(t.get("weight", 1)))
                                                  for t in d["targets"]),
                  d["retry"]["attempts"], d["retry"]["backoff_ms"], frozenset(d["failover_on"]),
                  frozenset(d["models"]), frozenset(d["teams"]), d.get("sticky"), d["enabled"], d["priority"])


@dataclass(frozen=True)
class Policies:
    ordered: tuple[Policy, ...]  # enabled ones, by (priority, name)
    by_name: dict[str, Policy]


NONE = Policies((), {})


def load() -> Policies:
    from proxy.models import RoutingPolicy

    found = []
    try:
        rows = list(RoutingPolicy.objects.all())
    except Exception:
        if snapshot.last() is not None:
            raise  # the database is away: the policies last loaded stay in force
        return NONE  # the table missing before migrate: no policies
    for row in rows:
        try:
            found.append(from_dict(validate(as_dict(row))))
        except Invalid:  # a row edited past validation (raw SQL) governs nothing
            continue
    ordered = tuple(sorted((p for p in found if p.enabled), key=lambda p: (p.priority, p.name)))
    return Policies(ordered, {p.name: p for p in found})


def as_dict(row) -> dict:
    return {"name": row.name, "strategy": row.strategy, "targets": row.targets, "retry": row.retry or {},
            "failover_on": row.failover_on if row.failover_on else list(DEFAULT_FAILOVER_ON),
            "models": row.models, "teams": row.teams, "sticky": row.sticky or None, "enabled": row.enabled,
            "priority": row.priority}


snapshot = Snapshot(load)


def reload():
    """After a change through this process (API, admin): in effect for its next request."""
    snapshot.invalidate()
    snapshot.get_sync()


def select(policies: Policies, named: str | None, principal, model: str) -> Policy | None:
    """x-smartflow-policy (which must exist, be enabled and be the caller's team's to use),
    else the first enabled policy whose teams and models match, else None."""
    if named is not None:
        policy = policies.by_name.get(named.strip())
        if policy is None or not policy.may_be_used_by(principal.team, principal.is_master):
            raise ClientError(f"Unknown routing policy '{named[:100]}' in x-smartflow-policy: no enabled policy "
                              "of that name is available to this key.", param="x-smartflow-policy",
                              code="unknown_policy")
        return policy
    for policy in policies.ordered:
        if policy.applies_to(principal.team, model):
            return policy
    return None


# --- the order of the targets ---------------------------------------------------


def sticky_key(chat: dict, headers: dict[str, str]) -> str | None:
    """Who the caller is, for sticky arms: x-smartflow-ab-key, OpenAI `user`, Anthropic metadata.user_id."""
    key = headers.get("x-smartflow-ab-key") or chat.get("user")
    if not key and isinstance(chat.get("metadata"), dict):
        key = chat["metadata"].get("user_id")
    return key if isinstance(key, str) and key else None


def draw(weights: list[float], point: float) -> int:
    """The index whose share of the total weight covers point (0 <= point < 1)."""
    total = sum(weights)
    running = 0.0
    for index, weight in enumerate(weights):
        running += weight
        if weight > 0 and point * total < running:
            return index
    return max(i for i, w in enumerate(weights) if w > 0)


def point_for(policy: Policy, key: str | None) -> float:
    """A stable point in [0, 1) for a sticky caller (same on every process), else a random one."""
    if key is None:
        return random.random()
    return xxhash.xxh64_intdigest(f"{policy.name}\x1f{key}".encode("utf-8", "surrogatepass")) / 2**64


def estimated_tokens(chat: dict) -> tuple[int, int]:
    """A crude estimate for ordering by price: prompt bytes / 4, and the output cap asked for."""
    prompt = len(orjson.dumps(chat.get("messages") or [])) // 4
    cap = chat.get("max_completion_tokens") or chat.get("max_tokens") or 256
    return prompt, cap if isinstance(cap, int) else 256


def price_usd(provider: str, model: str, tokens_in: int, tokens_out: int) -> float:
    """What this request would cost on provider/model, from the price table; unpriced models sort last."""
    price = prices.lookup(provider, model)
    if price is None:
        return float("inf")
    return float((tokens_in * price.input + tokens_out * price.output) / prices.MILLION)
