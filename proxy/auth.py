"""Who is calling: Smartflow keys (virtual or master) for the proxy and the management API."""
import asyncio
import hmac
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from rest_framework import authentication, exceptions

from .limits import Limits
from .models import KEY_PREFIX, VirtualKey, hash_key
from .providers.base import ClientError


@dataclass(frozen=True)
class Principal:
    key_prefix: str
    team: str | None
    team_id: int | None
    allowed_models: tuple[str, ...] = ()
    is_master: bool = False
    is_admin: bool = False
    key_id: int | None = None
    limits: Limits = Limits()

    def may_use(self, upstream_model: str) -> bool:
        """Whether the team may be served this model: the one the upstream is actually called with.

        The client's name alone never decides it: `x-smartflow-provider` or a
        `provider/` prefix can turn an allowed name into another model.
        """
        return self.is_master or not self.allowed_models or upstream_model in self.allowed_models


# key hash -> (expires, Principal or None); negative answers are cached too so a
# flood of bad keys cannot reach the database.
_cache: dict[str, tuple[float, Principal | None]] = {}


def key_from_headers(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    if value[:7].lower() == "bearer ":
        return value[7:].strip()
    return headers.get("x-api-key") or None


def _master(raw: str) -> Principal | None:
    master = settings.SMARTFLOW_MASTER_KEY
    if master and hmac.compare_digest(raw.encode(), master.encode()):
        return Principal(key_prefix=raw[:12], team=None, team_id=None, is_master=True, is_admin=True)
    return None


def _load(digest: str) -> Principal | None:
    key = (VirtualKey.objects.select_related("team")
           .filter(key_hash=digest, revoked_at__isnull=True).first())
    if key is None:
        return None
    team = key.team
    limits = Limits(team.rpm_limit, team.tpm_limit, team.budget_cap_usd, team.budget_period,
                    key.rpm_limit, key.tpm_limit, key.budget_cap_usd)
    return Principal(key_prefix=key.prefix, team=team.name, team_id=key.team_id,
                     allowed_models=tuple(team.allowed_models or ()), is_admin=key.is_admin,
                     key_id=key.pk, limits=limits)


_refreshing: dict[str, asyncio.Task] = {}


def _query(digest: str) -> asyncio.Task:
    """One database query per key at a time, however many requests wait for it."""
    task = _refreshing.get(digest)
    if task is None:
        task = _refreshing[digest] = asyncio.ensure_future(_load_and_cache(digest))
        task.add_done_callback(lambda _: _refreshing.pop(digest, None))
    return task


async def _load_and_cache(digest: str) -> tuple[float, Principal | None]:
    principal = await sync_to_async(_load_in_worker, thread_sensitive=False)(digest)
    if len(_cache) > 100_000:
        _cache.clear()
    hit = _cache[digest] = (time.monotonic() + settings.SMARTFLOW_CONFIG_TTL, principal)
    return hit


def _load_in_worker(digest: str) -> Principal | None:
    close_old_connections()  # worker threads outlive requests; drop a stale connection first
    return _load(digest)


async def authenticate(headers: dict[str, str]) -> Principal:
    raw = key_from_headers(headers)
    if not raw:
        raise ClientError("Missing API key. Send your Smartflow key as 'Authorization: Bearer sk-sf-…'.",
                          status=401, code="missing_api_key")
    principal = _master(raw)
    if principal:
        return principal
    if not raw.startswith(KEY_PREFIX):
        raise ClientError("Invalid API key: Smartflow keys start with 'sk-sf-'. "
                          "Provider keys are held by the gateway; use the key your admin issued.",
                          status=401, code="invalid_api_key")
    digest = hash_key(raw)
    hit = _cache.get(digest)
    if hit is None:
        hit = await asyncio.shield(_query(digest))
    elif hit[0] <= time.monotonic():
        _query(digest)  # serve the cached answer while one background query refreshes it
    if hit[1] is None:
        raise ClientError("Invalid or revoked API key. Ask your Smartflow admin for a key.",
                          status=401, code="invalid_api_key")
    return hit[1]


def authenticate_sync(raw: str | None) -> Principal | None:
    if not raw:
        return None
    return _master(raw) or (_load(hash_key(raw)) if raw.startswith(KEY_PREFIX) else None)


def forget_keys():
    _cache.clear()


class ManagementUser:
    """The identity DRF sees for a key-authenticated management request."""

    is_authenticated = True
    is_active = True

    def __init__(self, principal: Principal):
        self.principal = principal
        self.username = principal.key_prefix
        self.is_staff = self.is_superuser = principal.is_admin


class ManagementAuthentication(authentication.BaseAuthentication):
    """Bearer master key or an admin virtual key on the management API."""

    def authenticate(self, request):
        raw = key_from_headers({k.lower(): v for k, v in request.headers.items()})
        if not raw or not raw.startswith(KEY_PREFIX):
            return None  # other schemes (the SSO JWT) are handled by other classes
        principal = authenticate_sync(raw)
        if principal is None or not principal.is_admin:
            raise exceptions.AuthenticationFailed("Invalid key, or not an admin key.")
        return ManagementUser(principal), raw

    def authenticate_header(self, request):
        return "Bearer"
