"""End to end: config → login → IdP → callback → JWT → management API → teams synced with the defaults."""
import httpx

from .conftest import authorize, entra_provider, provider, sign_in, start
from .op import CLIENT_ID


def test_it_signs_in_end_to_end_and_syncs_teams(configure, op, browser, gateway):
    configure()
    auth_url = start(browser)
    query = dict(httpx.URL(auth_url).params)
    assert auth_url.startswith(op.url + "/authorize?")
    assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["state"] and query["nonce"] and "groups" in query["scope"].split()
    assert query["redirect_uri"] == gateway.management_url + "/dashboard/sso_login.html"

    response = browser.get("/api/auth/sso/callback", params=authorize(auth_url))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["username"] == "alice@example.com"
    assert body["user"]["email"] == "alice@example.com"
    assert body["teams"] == ["platform", "research"]
    assert "sessionid" in browser.cookies

    # The token endpoint got the PKCE verifier and the client secret (basic auth, the OAuth default).
    token_call = next(r for r in op.requests if r["path"] == "/token")
    assert token_call["form"]["code_verifier"] and token_call["client_auth"] == "basic"

    # The Smartflow JWT works on the management API.
    with httpx.Client(base_url=gateway.management_url, timeout=10,
                      headers={"Authorization": f"Bearer {body['token']}"}) as api:
        teams = api.get("/api/teams")
    assert teams.status_code == 200, teams.text
    by_name = {t["name"]: t for t in teams.json()["data"]}
    assert set(by_name) == {"platform", "research"}
    for team in by_name.values():
        assert team["source"] == "sso"
        assert team["budget_cap_usd"] == 100.0 and team["tpm_limit"] == 100000
        assert team["allowed_models"] == ["gpt-4.1", "claude-sonnet-4-6"]
        assert team["members"] == ["alice@example.com"] and team["last_synced"]

    # The browser session works too.
    assert browser.get("/api/teams").status_code == 200


def test_it_signs_in_through_entra_with_derived_endpoints(configure, op, browser):
    saved = configure(entra_provider(op))
    derived = saved["providers"][0]["derived"]
    assert derived["issuer"] == op.entra_issuer()
    assert derived["jwks_uri"].endswith("/discovery/v2.0/keys")
    auth_url = start(browser, "entra")
    assert "/oauth2/v2.0/authorize?" in auth_url
    response = browser.get("/api/auth/sso/callback", params=authorize(auth_url))
    assert response.status_code == 200, response.text
    token_call = next(r for r in op.requests if r["path"].endswith("/oauth2/v2.0/token"))
    assert token_call["client_auth"] == "post"
    # No discovery was needed: Entra's endpoints follow from the tenant id.
    assert not any(r["path"].endswith("openid-configuration") for r in op.requests)


def test_it_follows_key_rotation(configure, op, browser, gateway):
    configure()
    assert sign_in(browser)[0].status_code == 200
    op.rotate(keep_old=False)  # the cached JWKS no longer has the signing key
    with httpx.Client(base_url=gateway.management_url, timeout=10) as other:
        response, _ = sign_in(other)
    assert response.status_code == 200, response.text
    assert sum(r["path"] == "/jwks" for r in op.requests) == 2


def test_it_uses_the_named_secret_before_the_shared_one(configure, op, browser, monkeypatch):
    monkeypatch.setenv("OIDC_CLIENT_SECRET", "wrong-shared-secret")
    monkeypatch.setenv("OIDC_CLIENT_SECRET_CORP", op.client_secret)
    configure()
    assert sign_in(browser)[0].status_code == 200


def test_it_reports_a_wrong_client_secret(configure, op, browser, monkeypatch):
    monkeypatch.setenv("OIDC_CLIENT_SECRET", "wrong-shared-secret")
    configure()
    response, _ = sign_in(browser)
    assert response.status_code == 502
    assert response.json()["code"] == "client_auth_failed"
    assert "wrong-shared-secret" not in response.text


def test_it_uses_a_configured_redirect_uri(configure, op, browser, gateway):
    redirect = "http://localhost:9/dashboard/sso_login.html"  # as registered at the IdP
    op.redirect_uris = [redirect]
    configure(provider(op, redirect_uri=redirect))
    auth_url = start(browser)
    assert dict(httpx.URL(auth_url).params)["redirect_uri"] == redirect
    # The same URI goes to the token endpoint (the IdP checks that they match).
    assert browser.get("/api/auth/sso/callback", params=authorize(auth_url)).status_code == 200
