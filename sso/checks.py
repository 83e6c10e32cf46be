"""The step-by-step connection test behind POST /api/auth/sso/test: every step is fetched for real."""
from __future__ import annotations

from .config import Provider
from .errors import SsoError
from .oidc import ASYMMETRIC_ALGS, derived_entra, discovery_url, fetch_json, is_derived


def step(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": ok, "detail": detail}


def test_provider(provider: Provider) -> list[dict]:
    steps: list[dict] = []
    derived = derived_entra(provider) if is_derived(provider) else None
    if derived:
        steps.append(step("derive", True, f"From tenant id {provider.tenant_id}: issuer {derived.issuer}, "
                          f"JWKS {derived.jwks_uri}"))
    url = discovery_url(provider)
    doc = None
    try:
        doc = fetch_json(url, "discovery document")
        steps.append(step("discovery", True, f"Fetched {url}"))
    except SsoError as err:
        steps.append(step("discovery", False, err.message))
    expected_issuer = derived.issuer if derived else provider.issuer
    jwks_uri = provider.jwks_uri or (derived.jwks_uri if derived else "")
    if doc is not None:
        issuer = str(doc.get("issuer", ""))
        same = issuer.rstrip("/") == expected_issuer.rstrip("/")
        steps.append(step("issuer", same, f"Issuer {issuer}" if same else
                          f"The IdP names issuer '{issuer}', but {expected_issuer} is configured"
                          f"{' (derived from the tenant id)' if derived else ''}."))
        missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not doc.get(k)]
        steps.append(step("endpoints", not missing,
                          f"authorize {doc.get('authorization_endpoint')}, token {doc.get('token_endpoint')}"
                          if not missing else f"The discovery document lacks {', '.join(missing)}."))
        algs = [a for a in doc.get("id_token_signing_alg_values_supported", ["RS256"]) if a in ASYMMETRIC_ALGS]
        if not algs:
            steps.append(step("signing", False, "The IdP offers no asymmetric id_token signing algorithm."))
        jwks_uri = jwks_uri or str(doc.get("jwks_uri", ""))
    if jwks_uri:
        try:
            keys = fetch_json(jwks_uri, "JWKS").get("keys")
            usable = [k for k in keys or [] if isinstance(k, dict) and k.get("kty") in ("RSA", "EC")
                      and k.get("use", "sig") == "sig"]
            kids = ", ".join(str(k.get("kid", "?")) for k in usable)
            steps.append(step("jwks", bool(usable), f"{len(usable)} signing key(s) at {jwks_uri}: {kids}"
                              if usable else f"No usable signing key at {jwks_uri}."))
        except SsoError as err:
            steps.append(step("jwks", False, err.message))
    else:
        steps.append(step("jwks", False, "No JWKS URI: the discovery document could not be read."))
    secret, var = provider.client_secret()
    steps.append(step("client_secret", bool(secret),
                      f"Set in the environment ({var})" if secret else
                      f"Not set: put the client secret in {provider.secret_env_name} or OIDC_CLIENT_SECRET "
                      "in the gateway's environment"))
    return steps
