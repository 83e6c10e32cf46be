"""The sign-in flow: start (state, nonce, PKCE kept server-side) and finish (verify, sync teams, issue JWT).

A pending sign-in lives in the shared store under a hash of its state, with a
short expiry, and is consumed on first use, so a replayed callback finds
nothing. It is also bound to the browser that started it (a cookie holding a
random value whose hash is stored), so a state cannot be finished elsewhere.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import login
from django.db import transaction

from . import config as sso_config
from . import oidc, tokens
from .errors import SsoError
from .models import SsoIdentity
from .store import store
from .teams import SsoGroupSync, SyncResult, groups_from_claims

log = logging.getLogger(__name__)

BINDING_COOKIE = "smartflow_sso"
LOGIN_PAGE = "/dashboard/sso_login.html"
SESSION_BACKEND = "django.contrib.auth.backends.ModelBackend"


def state_ttl() -> float:
    return float(getattr(settings, "SMARTFLOW_SSO_STATE_TTL", 600))


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _state_key(state: str) -> str:
    return "state:" + _digest(state)


def pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def provider_or_404(name: str | None) -> sso_config.Provider:
    config = sso_config.load()
    provider = config.provider(name or "")
    if provider is None:
        names = ", ".join(p.name for p in config.providers) or "none configured"
        raise SsoError("unknown_provider", f"No SSO provider named '{name or ''}' (configured: {names}).", 404)
    return provider


@dataclass
class LoginStart:
    auth_url: str
    binding: str  # goes to the browser in BINDING_COOKIE
    expires_in: int


def start_login(provider_name: str | None, default_redirect_uri: str, binding: str | None) -> LoginStart:
    provider = provider_or_404(provider_name)
    endpoints = oidc.resolve(provider)
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)  # 86 characters, within RFC 7636's 43..128
    binding = binding if binding and len(binding) >= 32 else secrets.token_urlsafe(32)
    redirect_uri = provider.redirect_uri or default_redirect_uri
    ttl = state_ttl()
    record = {"provider": provider.name, "nonce": nonce, "code_verifier": verifier, "redirect_uri": redirect_uri,
              "binding": _digest(binding), "expires": time.time() + ttl}
    # Kept past its expiry for a while so a late callback hears "expired", not "unknown".
    store().set(_state_key(state), record, ttl=ttl + 300)
    query = {"response_type": "code", "client_id": provider.client_id, "redirect_uri": redirect_uri,
             "scope": " ".join(provider.scopes), "state": state, "nonce": nonce,
             "code_challenge": pkce_challenge(verifier), "code_challenge_method": "S256"}
    sep = "&" if "?" in endpoints.authorization_endpoint else "?"
    return LoginStart(auth_url=endpoints.authorization_endpoint + sep + urlencode(query), binding=binding,
                      expires_in=int(ttl))


@dataclass
class SignIn:
    user: object
    token: str
    expires: int
    provider: str
    sync: SyncResult
    groups: list[str]


def _take_state(state: str | None, binding: str | None) -> dict:
    if not state:
        raise SsoError("missing_state", "The callback has no state parameter; start the sign-in again.", 400)
    key = _state_key(state)
    record = store().get(key)
    if record is None:
        raise SsoError("invalid_state", "Unknown or already used sign-in state (a replayed or forged callback); "
                       "start the sign-in again.", 400)
    if not binding or not hmac.compare_digest(_digest(binding), record["binding"]):
        raise SsoError("state_mismatch", "This sign-in was started in another browser or session (state "
                       "mismatch); start the sign-in again from this browser.", 400)
    if store().pop(key) is None:  # another request consumed it between our read and now
        raise SsoError("invalid_state", "This sign-in state was already used; start the sign-in again.", 400)
    if record["expires"] < time.time():
        raise SsoError("state_expired", f"The sign-in took longer than {int(state_ttl())} seconds and expired; "
                       "start it again.", 400)
    return record


def finish_login(request, code: str | None, state: str | None, binding: str | None,
                 idp_error: str | None = None, idp_error_description: str | None = None) -> SignIn:
    record = _take_state(state, binding)
    if idp_error:
        detail = (idp_error_description or "")[:300]
        raise SsoError("idp_error", f"The IdP refused the sign-in: {idp_error[:100]}"
                       f"{' (' + detail + ')' if detail else ''}.", 400)
    if not code:
        raise SsoError("missing_code", "The callback has no code parameter; start the sign-in again.", 400)
    config = sso_config.load()
    provider = config.provider(record["provider"])
    if provider is None:
        raise SsoError("unknown_provider", f"The provider '{record['provider']}' was removed from the SSO "
                       "config during this sign-in.", 400)
    endpoints = oidc.resolve(provider)
    secret, _ = provider.client_secret()
    backend = oidc.SmartflowOIDCBackend(provider, endpoints, secret)
    token_info = backend.exchange_code(code, record["code_verifier"], record["redirect_uri"])
    id_token = token_info.get("id_token")
    if not id_token:
        raise SsoError("idp_error", "The IdP's token answer has no id_token; is 'openid' among the scopes?", 502)
    claims = backend.verify_token(id_token, nonce=record["nonce"])
    groups = groups_from_claims(claims, provider.groups_claim)
    if groups is None:
        raise SsoError("group_overage", "Entra ID left the groups out of the token because the user is in too "
                       "many groups (group overage: the claim was replaced by a Microsoft Graph link). In the app "
                       "registration, emit only groups assigned to the application (Token configuration → groups "
                       "claim → 'Groups assigned to the application'), then sign in again.", 403)
    sync = _sync(backend, provider, config, claims, groups)
    user = sync[0]
    if not user.is_active:
        raise SsoError("no_team_access", "You are not in any IdP group that gives access to Smartflow; ask your "
                       "administrator to add you to a group.", 403)
    token, exp = tokens.issue(user, sync[1].teams, provider.name)
    login(request, user, backend=SESSION_BACKEND)
    log.info("SSO sign-in: %s via %s, teams %s", user.get_username(), provider.name, sync[1].teams)
    return SignIn(user=user, token=token, expires=exp, provider=provider.name, sync=sync[1], groups=groups)


def _sync(backend, provider, config, claims, groups):
    """Find or create the user and apply the group sync, committed even when the outcome is 'no access'."""
    with transaction.atomic():
        user = backend.get_or_create_user("", "", claims)
        identity = SsoIdentity.objects.filter(issuer=claims["iss"], subject=claims["sub"]).first()
        first = identity is None
        previous = list(identity.groups) if identity else []
        if first:
            identity = SsoIdentity(user=user, issuer=claims["iss"], subject=claims["sub"])
        elif not user.is_active and not identity.deactivated_by_sync:
            raise SsoError("account_disabled", "This account was disabled by an administrator.", 403)
        result = SsoGroupSync(config).apply(user, groups, first_signin=first, previous_groups=previous)
        # Access follows the groups: none left (when synced) means no sign-in, and sessions and JWTs stop working.
        has_access = bool(groups) if result.synced else bool(result.teams)
        if user.is_active != has_access:
            user.is_active = has_access
            user.save(update_fields=["is_active"])
        identity.provider, identity.email = provider.name, claims.get("email", "")
        identity.groups = groups if result.synced else previous
        identity.deactivated_by_sync = not has_access
        identity.save()
    return user, result
