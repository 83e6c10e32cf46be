"""Dashboard sessions opened with a key last only while that key works (not revoked, master key unchanged).

The session keeps the key's SHA-256 (never the key). Each request checks it:
the master key against the setting, an admin key against the database at most
once per SMARTFLOW_CONFIG_TTL per process. A dead key's session is emptied
before Django's AuthenticationMiddleware reads the user from it, so every
reader of the session user (views, DRF's SessionAuthentication) sees a
signed-out visitor; the live-traces WebSocket checks the same at connect.
"""
from __future__ import annotations

import hmac
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import login

from proxy.models import VirtualKey, hash_key

SESSION_KEY = "smartflow_key_sha256"
MASTER_USERNAME = "smartflow-admin"  # the master key's account; an admin key's is "key-<prefix>"


def key_username(principal) -> str:
    return MASTER_USERNAME if principal.is_master else f"key-{principal.key_prefix}"


def is_key_username(name: str) -> bool:
    """Names only key sign-ins may hold: an SSO user given one would be made staff by the next."""
    return name == MASTER_USERNAME or name.startswith("key-")

# key hash -> (checked until, still an unrevoked admin key)
_checked: dict[str, tuple[float, bool]] = {}


def sign_in_with_key(request, user, raw_key: str, backend: str):
    login(request, user, backend=backend)
    request.session[SESSION_KEY] = hash_key(raw_key)


def _is_master(digest: str) -> bool:
    master = settings.SMARTFLOW_MASTER_KEY
    return bool(master) and hmac.compare_digest(digest, hash_key(master))


def _cached(digest: str) -> bool | None:
    hit = _checked.get(digest)
    return hit[1] if hit is not None and hit[0] > time.monotonic() else None


def _check(digest: str) -> bool:
    live = VirtualKey.objects.filter(key_hash=digest, is_admin=True, revoked_at__isnull=True).exists()
    if len(_checked) > 10_000:
        _checked.clear()
    _checked[digest] = (time.monotonic() + settings.SMARTFLOW_CONFIG_TTL, live)
    return live


def is_key_live(digest: str | None) -> bool:
    """True for a session not opened with a key, or one whose key still opens the dashboard."""
    if digest is None or _is_master(digest):
        return True
    cached = _cached(digest)
    return _check(digest) if cached is None else cached


async def ais_key_live(digest: str | None) -> bool:
    if digest is None or _is_master(digest):
        return True
    cached = _cached(digest)
    return await sync_to_async(_check)(digest) if cached is None else cached


def forget():
    _checked.clear()


class KeySessionMiddleware:
    """Empties the session of a revoked key; sits between SessionMiddleware and AuthenticationMiddleware."""

    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        if not is_key_live(request.session.get(SESSION_KEY)):
            request.session.flush()
        return self.get_response(request)

    async def _acall(self, request):
        if not await ais_key_live(await request.session.aget(SESSION_KEY)):
            await request.session.aflush()
        return await self.get_response(request)
