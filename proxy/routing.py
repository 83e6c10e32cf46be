"""Which provider serves a request, and under which model name (the tier table)."""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .providers.base import ClientError
from .snapshot import Snapshot

PROVIDER_NAMES = ("openai", "anthropic", "gemini", "ollama")
TIERS_FILE = Path(__file__).with_name("tiers.json")

# Name shapes each provider serves natively (CONTRACT: provider from the model name).
_NATIVE = [
    (re.compile(r"^(gpt-|chatgpt-|o\d)"), "openai"),
    (re.compile(r"^claude-"), "anthropic"),
    (re.compile(r"^gemini-"), "gemini"),
    (re.compile(r"^(llama|phi|deepseek|qwen|mistral|mixtral|gemma|codellama|llava|command-r|granite)|:"), "ollama"),
]
# Words that suggest a tier for a model the table does not know.
_FAST_HINT = re.compile(r"mini|nano|haiku|lite|small|tiny|\b\d{1,2}b\b|[-:]([1-9]|1[0-4])b")
_FLAGSHIP_HINT = re.compile(r"opus|pro\b|-pro|ultra|large|max|^o\d|70b|405b|r1|reason")
# What real model names look like (gpt-4.1, qwen2.5:14b, anthropic/claude-sonnet-4-6,
# hf.co/org/repo:Q4_K_M, name@version). The name ends up in upstream URLs (Gemini puts it in
# the path) and in the x-smartflow-model header, so nothing else gets through: no '?', '#',
# '%', whitespace or control characters. fullmatch, so a trailing newline is no match.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")


@dataclass(frozen=True)
class TierEntry:
    model: str
    provider: str
    tier: str
    is_default: bool = False


@dataclass
class TierTable:
    entries: dict[str, TierEntry]
    defaults: dict[tuple[str, str], str]
    # Memo of resolved routes; a new table (reload) starts empty.
    memo: dict = field(default_factory=dict)

    def lookup(self, model: str) -> TierEntry | None:
        """Exact name, else the longest table name that model extends (dated or suffixed variants)."""
        entry = self.entries.get(model)
        if entry:
            return entry
        best = None
        for name, candidate in self.entries.items():
            if model.startswith(name) and model[len(name)] in "-:@" and (best is None or len(name) > len(best.model)):
                best = candidate
        return best


def load_table() -> TierTable:
    rows = json.loads(TIERS_FILE.read_text())["models"]
    entries = {r["model"]: TierEntry(r["model"], r["provider"], r["tier"], r.get("default", False))
               for r in rows}
    try:
        from .models import TierEntry as TierRow

        for row in TierRow.objects.all():
            entries[row.model] = TierEntry(row.model, row.provider, row.tier, row.is_default)
    except Exception:  # table missing before migrate: the file alone is the table
        pass
    defaults = {}
    for e in entries.values():
        if e.is_default:
            defaults[(e.provider, e.tier)] = e.model
    return TierTable(entries, defaults)


table = Snapshot(load_table)


@dataclass(frozen=True)
class Route:
    provider: str
    upstream_model: str
    client_model: str
    override: str | None = None
    tier: str | None = None
    is_tier_inferred: bool = False
    reason: str = ""

    def as_record(self) -> dict:
        # chain: one {"provider", "model", "status", "ms", "error"} per upstream attempt, as made.
        return {"override": self.override, "policy": None, "strategy": None, "arm": None, "chain": [],
                "fallback_used": False, "reason": self.reason, "tier": self.tier,
                "tier_inferred": self.is_tier_inferred}


def native_provider(model: str, tiers: TierTable) -> str | None:
    entry = tiers.lookup(model)
    if entry:
        return entry.provider
    for pattern, provider in _NATIVE:
        if pattern.search(model):
            return provider
    return None


def infer_tier(model: str) -> str:
    name = model.lower()
    if _FAST_HINT.search(name):
        return "fast"
    if _FLAGSHIP_HINT.search(name):
        return "flagship"
    return "balanced"


def check_model_name(model) -> str:
    """The client's model name, if it is one; else a 400 naming `model`."""
    if not isinstance(model, str) or not model:
        raise ClientError("'model' is required and must be a non-empty string.", param="model")
    # Empty, '.' or '..' path segments would move a URL built from the name (Gemini's).
    if not _MODEL_NAME.fullmatch(model) or any(part in ("", ".", "..") for part in model.split("/")):
        raise ClientError(f"'model' {model[:60]!r} is not a model name: use letters, digits and "
                          "'.', '_', ':', '/', '@', '+', '-' (at most 200 characters, no empty, "
                          "'.' or '..' segments between slashes), for example 'gpt-4.1' or "
                          "'anthropic/claude-sonnet-4-6'.", param="model", code="invalid_model")
    return model


def check_provider(name: str) -> str:
    provider = name.strip().lower()
    if provider not in PROVIDER_NAMES:
        raise ClientError(f"Unknown provider '{name}' in x-smartflow-provider. "
                          f"Accepted values: {', '.join(PROVIDER_NAMES)}.",
                          param="x-smartflow-provider", code="unknown_provider")
    return provider


def route(model: str, override: str | None, tiers: TierTable) -> Route:
    key = (model, override)
    cached = tiers.memo.get(key)
    if cached is None:
        if len(tiers.memo) > 10_000:  # a flood of distinct names must not grow memory
            tiers.memo.clear()
        cached = tiers.memo[key] = _resolve(model, override, tiers)
    return cached


def _resolve(model: str, override: str | None, tiers: TierTable) -> Route:
    target = check_provider(override) if override else None
    name = model
    prefix, sep, rest = model.partition("/")
    if sep and prefix.lower() in PROVIDER_NAMES and rest:
        name = rest
        target = target or prefix.lower()
    native = native_provider(name, tiers)
    if target is None:
        if native is None:
            raise ClientError(f"Unknown model '{model}'. Name the provider as 'provider/model' "
                              f"or with the x-smartflow-provider header ({', '.join(PROVIDER_NAMES)}).",
                              param="model", code="model_not_found", status=404)
        target = native
    if native in (None, target):
        return Route(target, name, model, override, _tier_of(name, tiers),
                     reason="native model" if native else "passed unchanged to the named provider")
    entry = tiers.lookup(name)
    tier = entry.tier if entry else infer_tier(name)
    upstream = tiers.defaults.get((target, tier))
    if upstream is None:
        raise ClientError(f"No {tier} model is configured for {target}; add one to the tier table.",
                          param="model", code="model_not_found", status=404)
    how = "tier table" if entry else "tier inferred from the model name"
    return Route(target, upstream, model, override, tier, entry is None,
                 reason=f"{how}: {name} ({native}, {tier}) -> {upstream} ({target})")


def _tier_of(name: str, tiers: TierTable) -> str | None:
    entry = tiers.lookup(name)
    return entry.tier if entry else None

