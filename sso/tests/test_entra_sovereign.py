"""Entra with an explicit issuer (sovereign clouds, External ID custom domains): discovery, not the global cloud.

The test OP plays the sovereign cloud: its Entra-style paths sit on its own host, and the global
cloud (SMARTFLOW_ENTRA_AUTHORITY, login.microsoftonline.com) must never be asked.
"""
import httpx

from .conftest import authorize, entra_provider, start

GLOBAL = "https://login.microsoftonline.com"


def sovereign(op, settings, configure):
    saved = configure(entra_provider(op, issuer=op.entra_issuer()))
    settings.SMARTFLOW_ENTRA_AUTHORITY = GLOBAL  # configure() pointed it at the OP; use the real default
    return saved


def test_it_discovers_the_endpoints_from_the_issuer(configure, op, settings, management_client):
    saved = sovereign(op, settings, configure)
    assert saved["providers"][0]["derived"] == {
        "discovery_url": op.entra_issuer() + "/.well-known/openid-configuration"}
    response = management_client.post("/api/auth/sso/test", json={"provider": "entra"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True, body
    assert [s["name"] for s in body["steps"]] == ["discovery", "issuer", "endpoints", "jwks", "client_secret"]
    assert "microsoftonline.com" not in response.text
    assert op.url in next(s for s in body["steps"] if s["name"] == "discovery")["detail"]
    assert op.url in next(s for s in body["steps"] if s["name"] == "jwks")["detail"]


def test_it_signs_in_through_the_sovereign_cloud(configure, op, settings, browser):
    sovereign(op, settings, configure)
    auth_url = start(browser, "entra")
    assert auth_url.startswith(op.url + "/11111111-2222-3333-4444-555555555555/oauth2/v2.0/authorize?")
    response = browser.get("/api/auth/sso/callback", params=authorize(auth_url))
    assert response.status_code == 200, response.text
    assert response.json()["user"]["username"] == "alice@example.com"
    paths = [r["path"] for r in op.requests]
    assert paths[0].endswith("/v2.0/.well-known/openid-configuration")  # discovered, on the OP's host
    token_call = next(r for r in op.requests if r["path"].endswith("/oauth2/v2.0/token"))
    assert token_call["client_auth"] == "post"  # Entra takes the secret in the body, as when derived


def test_a_test_before_saving_uses_the_issuer_too(gateway, op, settings, management_client):
    settings.SMARTFLOW_ENTRA_AUTHORITY = GLOBAL
    response = management_client.post("/api/auth/sso/test", json=entra_provider(op, issuer=op.entra_issuer()))
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    assert "microsoftonline.com" not in response.text


def test_without_an_issuer_the_endpoints_are_still_derived(configure, op, browser):
    configure(entra_provider(op))  # SMARTFLOW_ENTRA_AUTHORITY is the OP here
    auth_url = start(browser, "entra")
    assert httpx.URL(auth_url).path.endswith("/oauth2/v2.0/authorize")
    assert not any(r["path"].endswith("openid-configuration") for r in op.requests)
