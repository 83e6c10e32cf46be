"""Talking to the IdP: endpoints (Entra derived or discovered, others discovered), JWKS with rotation, the token check.

Token exchange, id_token verification and user creation go through a subclass
of mozilla-django-oidc's ``OIDCAuthenticationBackend``, built per provider
because the SSO config is dynamic (nothing is fixed in settings).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import httpx
import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings

from .config import Provider
from .errors import SsoError
from .sessions import is_key_username

log = logging.getLogger(__name__)

ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
DISCOVERY_TTL = 300.0
JWKS_TTL = 3600.0
LEEWAY_SECONDS = 30
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def entra_authority() -> str:
    return getattr(settings, "SMARTFLOW_ENTRA_AUTHORITY", "https://login.microsoftonline.com").rstrip("/")


@dataclass(frozen=True)
class Endpoints:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    signing_algs: tuple[str, ...] = ("RS256",)
    token_auth_methods: tuple[str, ...] = ("client_secret_basic",)
    source: str = "discovery"  # or "derived" (Entra, from the tenant id)


def is_derived(provider: Provider) -> bool:
    """Entra without an explicit issuer: the endpoints follow from the tenant id on the global cloud.

    An explicit issuer (a sovereign cloud such as login.microsoftonline.us, an External ID custom
    domain) is discovered like any OIDC issuer, since its hosts cannot be guessed from the tenant id.
    """
    return provider.type == "entra" and not provider.issuer


def derived_entra(provider: Provider) -> Endpoints:
    """Entra's v2.0 endpoints from the tenant id; the JWKS may be overridden in the config."""
    base = f"{entra_authority()}/{provider.tenant_id}"
    return Endpoints(issuer=f"{base}/v2.0",
                     authorization_endpoint=f"{base}/oauth2/v2.0/authorize",
                     token_endpoint=f"{base}/oauth2/v2.0/token",
                     jwks_uri=provider.jwks_uri or f"{base}/discovery/v2.0/keys",
                     token_auth_methods=("client_secret_post",),
                     source="derived")


def discovery_url(provider: Provider) -> str:
    if is_derived(provider):
        return f"{entra_authority()}/{provider.tenant_id}/v2.0/.well-known/openid-configuration"
    return f"{provider.issuer}/.well-known/openid-configuration"


def fetch_json(url: str, what: str) -> dict:
    """GET a JSON document from the IdP; every failure is an SsoError naming the URL and the cause."""
    try:
        response = httpx.get(url, timeout=TIMEOUT, follow_redirects=False, headers={"Accept": "application/json"})
    except httpx.TimeoutException:
        raise SsoError("idp_unreachable", f"The IdP did not answer in time at {url} ({what}).", 502)
    except httpx.HTTPError as exc:
        raise SsoError("idp_unreachable", f"Could not reach the IdP at {url} ({what}): {type(exc).__name__}.", 502)
    if response.status_code != 200:
        raise SsoError("idp_error", f"The IdP answered {response.status_code} for {url} ({what}).", 502)
    try:
        body = response.json()
    except ValueError:
        raise SsoError("idp_error", f"The IdP's {what} at {url} is not JSON.", 502)
    if not isinstance(body, dict):
        raise SsoError("idp_error", f"The IdP's {what} at {url} is not a JSON object.", 502)
    return body


_discovery: dict[str, tuple[float, dict]] = {}
_jwks: dict[str, tuple[float, dict]] = {}
_lock = threading.Lock()


def discover(url: str, fresh: bool = False) -> dict:
    hit = _discovery.get(url)
    if hit and not fresh and hit[0] > time.monotonic():
        return hit[1]
    doc = fetch_json(url, "discovery document")
    with _lock:
        _discovery[url] = (time.monotonic() + DISCOVERY_TTL, doc)
    return doc


def endpoints_from_discovery(provider: Provider, doc: dict) -> Endpoints:
    missing = [k for k in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri") if not doc.get(k)]
    if missing:
        raise SsoError("idp_error", f"The discovery document for '{provider.name}' lacks {', '.join(missing)}.", 502)
    # OpenID Connect Discovery 1.0 §4.3: the document's issuer must be the one we asked.
    if doc["issuer"].rstrip("/") != provider.issuer.rstrip("/"):
        raise SsoError("issuer_mismatch", f"The discovery document names issuer {doc['issuer']}, "
                       f"not the configured {provider.issuer}; fix 'issuer' for '{provider.name}'.", 502)
    algs = tuple(a for a in doc.get("id_token_signing_alg_values_supported", ["RS256"]) if a in ASYMMETRIC_ALGS)
    methods = tuple(doc.get("token_endpoint_auth_methods_supported") or ("client_secret_basic",))
    if provider.type == "entra":  # as for the derived endpoints: Entra takes the secret in the body
        methods = ("client_secret_post",)
    return Endpoints(issuer=doc["issuer"], authorization_endpoint=doc["authorization_endpoint"],
                     token_endpoint=doc["token_endpoint"], jwks_uri=provider.jwks_uri or doc["jwks_uri"],
                     userinfo_endpoint=doc.get("userinfo_endpoint", ""), signing_algs=algs or ("RS256",),
                     token_auth_methods=methods)


def resolve(provider: Provider) -> Endpoints:
    """The provider's endpoints: derived for Entra without an issuer (no network), else discovered (cached)."""
    if is_derived(provider):
        return derived_entra(provider)
    return endpoints_from_discovery(provider, discover(discovery_url(provider)))


def fetch_jwks(uri: str) -> dict:
    doc = fetch_json(uri, "JWKS")
    if not isinstance(doc.get("keys"), list):
        raise SsoError("idp_error", f"The JWKS at {uri} has no 'keys' list.", 502)
    with _lock:
        _jwks[uri] = (time.monotonic() + JWKS_TTL, doc)
    return doc


def _pick(doc: dict, kid: str | None, alg: str) -> dict | None:
    keys = [k for k in doc["keys"] if k.get("use", "sig") == "sig" and k.get("alg", alg) == alg]
    if kid is None:
        return keys[0] if len(keys) == 1 else None
    return next((k for k in keys if k.get("kid") == kid), None)


def signing_key(uri: str, kid: str | None, alg: str) -> jwt.PyJWK:
    """The IdP key for this kid; an unknown kid triggers one refetch, since IdPs rotate keys."""
    hit = _jwks.get(uri)
    doc = hit[1] if hit and hit[0] > time.monotonic() else fetch_jwks(uri)
    key = _pick(doc, kid, alg)
    if key is None and hit is not None:
        key = _pick(fetch_jwks(uri), kid, alg)
    if key is None:
        raise SsoError("invalid_id_token", f"The id_token is signed with key '{kid}', which the IdP's JWKS does "
                       "not publish: the token is forged or tampered with.", 401)
    try:
        return jwt.PyJWK(key, algorithm=alg)
    except jwt.PyJWTError as exc:
        raise SsoError("idp_error", f"The IdP's key '{kid}' cannot be used: {exc}.", 502)


def forget():
    """Drop cached discovery documents and key sets (tests; a changed IdP)."""
    _discovery.clear()
    _jwks.clear()


class SmartflowOIDCBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend, configured per provider at call time instead of from settings."""

    def __init__(self, provider: Provider, endpoints: Endpoints, client_secret: str):
        self.provider, self.endpoints = provider, endpoints
        self.OIDC_OP_TOKEN_ENDPOINT = endpoints.token_endpoint
        self.OIDC_OP_USER_ENDPOINT = endpoints.userinfo_endpoint
        self.OIDC_OP_JWKS_ENDPOINT = endpoints.jwks_uri
        self.OIDC_RP_CLIENT_ID = provider.client_id
        self.OIDC_RP_CLIENT_SECRET = client_secret
        self.OIDC_RP_SIGN_ALGO = endpoints.signing_algs[0]
        self.OIDC_RP_IDP_SIGN_KEY = None
        self.UserModel = get_user_model()
        # client_secret_basic is the OAuth default (and what Okta apps expect); Entra takes the secret in the body.
        basic = bool(client_secret) and "client_secret_basic" in endpoints.token_auth_methods
        self._settings = {
            "OIDC_TIMEOUT": (5, 15), "OIDC_VERIFY_SSL": True, "OIDC_PROXY": None,
            "OIDC_USE_NONCE": True, "OIDC_ALLOW_UNSECURED_JWT": False, "OIDC_CREATE_USER": True,
            "OIDC_TOKEN_USE_BASIC_AUTH": basic, "OIDC_STORE_ACCESS_TOKEN": False, "OIDC_STORE_ID_TOKEN": False,
            "OIDC_RP_SCOPES": " ".join(provider.scopes),
        }
        self.created = False

    def get_settings(self, attr, *args):  # instance-level: this provider's values first
        if attr in self._settings:
            return self._settings[attr]
        return import_from_settings(attr, *args)

    # --- token exchange -------------------------------------------------------
    def exchange_code(self, code: str, code_verifier: str, redirect_uri: str) -> dict:
        payload = {"client_id": self.OIDC_RP_CLIENT_ID, "grant_type": "authorization_code", "code": code,
                   "redirect_uri": redirect_uri, "code_verifier": code_verifier}
        if self.OIDC_RP_CLIENT_SECRET:
            payload["client_secret"] = self.OIDC_RP_CLIENT_SECRET
        try:
            return self.get_token(payload)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise SsoError("idp_unreachable", f"Could not reach the IdP's token endpoint "
                           f"{self.OIDC_OP_TOKEN_ENDPOINT}: {type(exc).__name__}.", 502)
        except requests.HTTPError as exc:
            raise self._token_error(exc.response)
        except ValueError:
            raise SsoError("idp_error", "The IdP's token endpoint did not answer with JSON.", 502)

    def _token_error(self, response) -> SsoError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        error = str(body.get("error", ""))[:100]
        detail = str(body.get("error_description", ""))[:300]
        if error == "invalid_grant":
            return SsoError("code_rejected", "The IdP refused the authorization code (invalid_grant: already used, "
                            f"expired, or issued for another client or redirect URI). {detail}".strip(), 400)
        if error == "invalid_client" or response.status_code == 401:
            return SsoError("client_auth_failed", "The IdP refused the client credentials (invalid_client): check "
                            f"client_id and {self.provider.secret_env_name} / OIDC_CLIENT_SECRET. {detail}".strip(),
                            502)
        return SsoError("idp_error", f"The IdP's token endpoint answered {response.status_code}"
                        f"{': ' + error if error else ''}. {detail}".strip(), 502)

    # --- id_token verification ----------------------------------------------
    def retrieve_matching_jwk(self, token):
        header = self._header(token)
        return signing_key(self.OIDC_OP_JWKS_ENDPOINT, header.get("kid"), header["alg"])

    def _header(self, token) -> dict:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise SsoError("invalid_id_token", "The id_token is not a well-formed JWT.", 401)
        if header.get("alg") not in self.endpoints.signing_algs:
            raise SsoError("invalid_id_token", f"The id_token uses algorithm '{header.get('alg')}'; only "
                           f"{', '.join(self.endpoints.signing_algs)} is accepted for this IdP.", 401)
        return header

    def _verify_jws(self, payload, key):
        """Signature, issuer, audience, expiry and issue time (the base class checks the signature only)."""
        header = self._header(payload)
        try:
            claims = jwt.decode(payload, key, algorithms=[header["alg"]], audience=self.OIDC_RP_CLIENT_ID,
                                issuer=self.endpoints.issuer, leeway=LEEWAY_SECONDS,
                                options={"require": ["iss", "aud", "exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError:
            raise SsoError("id_token_expired", "The id_token has expired; sign in again "
                           "(if this repeats, check the gateway's clock).", 401)
        except jwt.InvalidAudienceError:
            raise SsoError("wrong_audience", f"The id_token was issued for another application (audience is not "
                           f"'{self.OIDC_RP_CLIENT_ID}'); check client_id for '{self.provider.name}'.", 401)
        except jwt.InvalidIssuerError:
            raise SsoError("wrong_issuer", f"The id_token's issuer is not {self.endpoints.issuer}.", 401)
        except jwt.ImmatureSignatureError:
            raise SsoError("invalid_id_token", "The id_token is not valid yet (iat/nbf in the future); "
                           "check the gateway's clock.", 401)
        except jwt.MissingRequiredClaimError as exc:
            raise SsoError("invalid_id_token", f"The id_token lacks the '{exc.claim}' claim.", 401)
        except jwt.InvalidSignatureError:
            raise SsoError("invalid_id_token", "The id_token's signature does not verify: it was tampered with "
                           "or not issued by this IdP.", 401)
        except jwt.PyJWTError as exc:
            raise SsoError("invalid_id_token", f"The id_token is invalid: {exc}.", 401)
        aud = claims["aud"]
        # OIDC Core §3.1.3.7: with several audiences, azp must be us.
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.OIDC_RP_CLIENT_ID:
            raise SsoError("wrong_audience", "The id_token names several audiences and its azp is not this "
                           "application.", 401)
        return claims

    def verify_token(self, token, **kwargs):
        try:
            return super().verify_token(token, **kwargs)
        except SuspiciousOperation:  # the base class's nonce check is the only one left raising this
            raise SsoError("nonce_mismatch", "The id_token's nonce does not match this sign-in (a replayed or "
                           "injected token); start the sign-in again.", 401)

    # --- users ----------------------------------------------------------------
    def get_userinfo(self, access_token, id_token, payload):
        """The verified id_token claims are the user's details (no extra round trip)."""
        return payload

    def verify_claims(self, claims):
        return bool(claims.get("sub"))

    def filter_users_by_claims(self, claims):
        # Linked by issuer + subject, never by e-mail: another IdP could assert the same address.
        return self.UserModel.objects.filter(sso_identities__issuer=claims["iss"],
                                             sso_identities__subject=claims["sub"])

    def create_user(self, claims):
        base = (claims.get("preferred_username") or claims.get("email")
                or f"{self.provider.name}-{claims['sub']}")[:140]
        if is_key_username(base):  # "smartflow-admin", "key-…": the key sign-ins' accounts
            base = f"sso-{base}"
        username, n = base, 1
        while self.UserModel.objects.filter(username=username).exists():
            n += 1
            username = f"{base}-{n}"
        user = self.UserModel.objects.create_user(username, email=claims.get("email", ""))
        user.set_unusable_password()
        self.created = True
        return self.update_user(user, claims)

    def update_user(self, user, claims):
        fields = {"email": claims.get("email", "") or user.email,
                  "first_name": (claims.get("given_name") or "")[:150] or user.first_name,
                  "last_name": (claims.get("family_name") or "")[:150] or user.last_name}
        if not fields["first_name"] and claims.get("name"):
            fields["first_name"] = claims["name"][:150]
        for key, value in fields.items():
            setattr(user, key, value)
        user.save()
        return user
