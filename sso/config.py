"""The SSO config: validation, the shared store, and a very short in-memory cache.

Secrets never pass through here: a provider's client secret comes from
``OIDC_CLIENT_SECRET_<NAME>`` or ``OIDC_CLIENT_SECRET`` in the environment.
"""
from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

from .store import store

STORE_KEY = "config"
TYPES = ("entra", "okta", "oidc")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,254}$")
DEFAULT_SCOPES = {"entra": ["openid", "email", "profile"],
                  "okta": ["openid", "email", "profile", "groups"],
                  "oidc": ["openid", "email", "profile"]}
PROVIDER_FIELDS = {"name", "type", "tenant_id", "issuer", "client_id", "jwks_uri", "redirect_uri",
                   "groups_claim", "scopes"}
# Shown by GET and ignored when a GET answer is posted back, so GET → POST round-trips.
READ_ONLY_FIELDS = {"derived", "client_secret_configured"}
TOP_FIELDS = {"providers", "team_defaults", "sync_on_every_signin"}
DEFAULTS_FIELDS = {"budget_cap_usd", "budget_period", "tpm_limit", "rpm_limit", "allowed_models"}
PERIODS = ("monthly", "daily", "total")
MAX_LIMIT = 2_147_483_647  # the database's integer column
MAX_BUDGET = 99_999_999  # the database's budget column (12 digits, 4 after the point)
NOT_AN_OBJECT = "the body must be a JSON object with 'providers', 'team_defaults' and 'sync_on_every_signin'"


class ConfigError(ValueError):
    """The config body is invalid; ``errors`` lists every problem, each naming its field."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Provider:
    name: str
    type: str
    client_id: str
    tenant_id: str = ""
    issuer: str = ""
    jwks_uri: str = ""
    redirect_uri: str = ""
    groups_claim: str = "groups"
    scopes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        body = {"name": self.name, "type": self.type}
        if self.type == "entra":
            body["tenant_id"] = self.tenant_id
        if self.issuer:
            body["issuer"] = self.issuer
        body["client_id"] = self.client_id
        for key in ("jwks_uri", "redirect_uri"):
            if getattr(self, key):
                body[key] = getattr(self, key)
        body["groups_claim"] = self.groups_claim
        body["scopes"] = list(self.scopes)
        return body

    @property
    def secret_env_name(self) -> str:
        return "OIDC_CLIENT_SECRET_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper())

    def client_secret(self) -> tuple[str, str]:
        """(secret, the variable it came from); ("", "") when neither is set."""
        for var in (self.secret_env_name, "OIDC_CLIENT_SECRET"):
            value = os.environ.get(var, "")
            if value:
                return value, var
        return "", ""


@dataclass(frozen=True)
class TeamDefaults:
    budget_cap_usd: float | None = None
    tpm_limit: int | None = None
    allowed_models: tuple[str, ...] = ()
    rpm_limit: int | None = None
    budget_period: str = "monthly"

    def as_dict(self) -> dict:
        return {"budget_cap_usd": self.budget_cap_usd, "budget_period": self.budget_period,
                "tpm_limit": self.tpm_limit, "rpm_limit": self.rpm_limit,
                "allowed_models": list(self.allowed_models)}


@dataclass(frozen=True)
class SsoConfig:
    providers: tuple[Provider, ...] = ()
    team_defaults: TeamDefaults = field(default_factory=TeamDefaults)
    sync_on_every_signin: bool = True

    def as_dict(self) -> dict:
        return {"providers": [p.as_dict() for p in self.providers],
                "team_defaults": self.team_defaults.as_dict(),
                "sync_on_every_signin": self.sync_on_every_signin}

    def provider(self, name: str) -> Provider | None:
        return next((p for p in self.providers if p.name == name), None)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(value, where: str, errors: list[str]) -> str:
    """An https URL (plain http only for loopback hosts, as in local tests)."""
    if not isinstance(value, str) or not value:
        errors.append(f"{where}: must be a URL string")
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        errors.append(f"{where}: '{value}' is not an absolute http(s) URL")
    elif parts.scheme == "http" and not _is_loopback(parts.hostname):
        errors.append(f"{where}: must use https (plain http is accepted for localhost only)")
    elif parts.query or parts.fragment:
        errors.append(f"{where}: must not carry a query string or fragment")
    return value


def _secret_fields(obj: dict) -> list[str]:
    return sorted(k for k in obj if k not in READ_ONLY_FIELDS
                  and ("secret" in k.lower() or k.lower() in ("password", "private_key")))


def parse_provider(raw, where: str, errors: list[str]) -> Provider | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be an object")
        return None
    if secrets := _secret_fields(raw):
        errors.append(f"{where}: {', '.join(secrets)} not accepted: secrets are never stored through this API; "
                      "set OIDC_CLIENT_SECRET (or OIDC_CLIENT_SECRET_<NAME> for one provider) in the "
                      "gateway's environment")
    unknown = sorted(set(raw) - PROVIDER_FIELDS - READ_ONLY_FIELDS - set(secrets))
    if unknown:
        errors.append(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(PROVIDER_FIELDS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        errors.append(f"{where}.name: required; lower-case letters, digits, '-' or '_' (up to 63), e.g. 'entra'")
        name = str(name)
    where = f"providers[{name}]" if NAME_RE.match(name) else where
    kind = raw.get("type")
    if kind not in TYPES:
        errors.append(f"{where}.type: must be one of {', '.join(TYPES)}")
        kind = ""  # whatever was sent (a list, an object) is not looked up anywhere below
    client_id = raw.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip():
        errors.append(f"{where}.client_id: required (the application/client id registered at the IdP)")
        client_id = ""
    tenant_id, issuer = raw.get("tenant_id", ""), raw.get("issuer", "")
    if kind == "entra":
        if not isinstance(tenant_id, str) or not TENANT_RE.match(tenant_id):
            errors.append(f"{where}.tenant_id: required for entra (the directory's GUID or domain)")
        elif tenant_id.lower() in ("common", "organizations", "consumers"):
            errors.append(f"{where}.tenant_id: '{tenant_id}' is multi-tenant; give your own directory's "
                          "tenant id so the issuer can be checked")
        if issuer:
            issuer = check_url(issuer, f"{where}.issuer", errors)
    elif kind in ("okta", "oidc"):
        if tenant_id:
            errors.append(f"{where}.tenant_id: only for type entra; give 'issuer' instead")
        if not issuer:
            errors.append(f"{where}.issuer: required for {kind} (endpoints come from "
                          "{issuer}/.well-known/openid-configuration)")
        else:
            issuer = check_url(issuer, f"{where}.issuer", errors)
    jwks_uri = raw.get("jwks_uri", "")
    if jwks_uri:
        jwks_uri = check_url(jwks_uri, f"{where}.jwks_uri", errors)
    redirect_uri = raw.get("redirect_uri", "")
    if redirect_uri:
        redirect_uri = check_url(redirect_uri, f"{where}.redirect_uri", errors)
    groups_claim = raw.get("groups_claim", "groups")
    if not isinstance(groups_claim, str) or not groups_claim:
        errors.append(f"{where}.groups_claim: must be a claim name such as 'groups'")
        groups_claim = "groups"
    scopes = raw.get("scopes", DEFAULT_SCOPES.get(kind, ["openid"]))
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s and " " not in s for s in scopes):
        errors.append(f"{where}.scopes: must be a list of scope names")
        scopes = ["openid"]
    elif "openid" not in scopes:
        errors.append(f"{where}.scopes: must include 'openid'")
    return Provider(name=name, type=str(kind), client_id=client_id.strip(),
                    tenant_id=tenant_id if kind == "entra" else "",
                    issuer=issuer.rstrip("/") if isinstance(issuer, str) else "",
                    jwks_uri=jwks_uri, redirect_uri=redirect_uri, groups_claim=groups_claim,
                    scopes=tuple(dict.fromkeys(scopes)))


def _number(value, where: str, errors: list[str], integer: bool):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        errors.append(f"{where}: must be {'an integer' if integer else 'a number'} or null")
        return None
    if value < 0:
        errors.append(f"{where}: must not be negative")
    if value > (MAX_LIMIT if integer else MAX_BUDGET):
        errors.append(f"{where}: must be at most {MAX_LIMIT if integer else MAX_BUDGET}")
    return int(value) if integer else float(value)


def _nul_paths(value, where: str):
    """Where a NUL character hides in the body (PostgreSQL's JSONB refuses to store one)."""
    if isinstance(value, str):
        if "\x00" in value:
            yield where
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nul_paths(key, f"{where}{'.' if where else ''}(a key)")
            yield from _nul_paths(item, f"{where}{'.' if where else ''}{key}"[:200])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nul_paths(item, f"{where}[{i}]")


def parse(body) -> SsoConfig:
    """Validate a whole config body; raises ConfigError listing every problem."""
    errors: list[str] = []
    if not isinstance(body, dict):
        raise ConfigError([NOT_AN_OBJECT])
    if nul := sorted(set(_nul_paths(body, ""))):
        raise ConfigError([f"{path}: must not contain NUL (\\u0000) characters" for path in nul])
    if secrets := _secret_fields(body):
        errors.append(f"{', '.join(secrets)} not accepted: secrets come from the environment "
                      "(OIDC_CLIENT_SECRET or OIDC_CLIENT_SECRET_<NAME>)")
    unknown = sorted(set(body) - TOP_FIELDS - set(secrets))
    if unknown:
        errors.append(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_FIELDS))}")
    raw_providers = body.get("providers", [])
    providers: list[Provider] = []
    if not isinstance(raw_providers, list):
        errors.append("providers: must be a list of provider objects")
    else:
        for i, raw in enumerate(raw_providers):
            provider = parse_provider(raw, f"providers[{i}]", errors)
            if provider:
                providers.append(provider)
        names = [p.name for p in providers]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            errors.append(f"providers: duplicate name(s) {', '.join(dupes)}; each provider needs its own name")
    raw_defaults = body.get("team_defaults", {}) or {}
    defaults = TeamDefaults()
    if not isinstance(raw_defaults, dict):
        errors.append("team_defaults: must be an object")
    else:
        unknown = sorted(set(raw_defaults) - DEFAULTS_FIELDS)
        if unknown:
            errors.append(f"team_defaults: unknown field(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(DEFAULTS_FIELDS))}")
        models = raw_defaults.get("allowed_models", [])
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            errors.append("team_defaults.allowed_models: must be a list of model names ([] allows every model)")
            models = []
        period = raw_defaults.get("budget_period", "monthly")
        if period not in PERIODS:
            errors.append(f"team_defaults.budget_period: must be one of {', '.join(PERIODS)}")
            period = "monthly"
        defaults = TeamDefaults(
            budget_cap_usd=_number(raw_defaults.get("budget_cap_usd"), "team_defaults.budget_cap_usd", errors, False),
            tpm_limit=_number(raw_defaults.get("tpm_limit"), "team_defaults.tpm_limit", errors, True),
            allowed_models=tuple(dict.fromkeys(models)),
            rpm_limit=_number(raw_defaults.get("rpm_limit"), "team_defaults.rpm_limit", errors, True),
            budget_period=period)
    sync = body.get("sync_on_every_signin", True)
    if not isinstance(sync, bool):
        errors.append("sync_on_every_signin: must be true or false")
    if errors:
        raise ConfigError(errors)
    return SsoConfig(providers=tuple(providers), team_defaults=defaults, sync_on_every_signin=sync)


# (monotonic expiry, config): a very short cache so a save on any process is seen almost at once.
_cached: tuple[float, SsoConfig] | None = None
_lock = threading.Lock()


def _ttl() -> float:
    return float(getattr(settings, "SMARTFLOW_SSO_CONFIG_TTL", 1.0))


def load() -> SsoConfig:
    global _cached
    hit = _cached
    if hit and hit[0] > time.monotonic():
        return hit[1]
    raw = store().get(STORE_KEY)
    config = parse(raw) if raw else SsoConfig()
    with _lock:
        _cached = (time.monotonic() + _ttl(), config)
    return config


def save(config: SsoConfig) -> SsoConfig:
    global _cached
    store().set(STORE_KEY, config.as_dict())
    with _lock:
        _cached = None
    return config


def forget():
    """Drop this process's cached copy (tests, and after writes)."""
    global _cached
    _cached = None
