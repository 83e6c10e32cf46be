"""GET/POST /api/auth/sso/config and POST /api/auth/sso/test."""
import httpx
import pytest

from conftest import wait_for

from .conftest import config_body, entra_provider, provider
from .op import CLIENT_ID, ENTRA_TENANT


def test_it_saves_and_returns_the_config(configure, op, management_client):
    saved = configure(provider(op), entra_provider(op))
    got = management_client.get("/api/auth/sso/config").json()
    assert got == saved
    corp, entra = got["providers"]
    assert corp == {"name": "corp", "type": "oidc", "issuer": op.url, "client_id": CLIENT_ID,
                    "groups_claim": "groups", "scopes": ["openid", "email", "profile", "groups"],
                    "client_secret_configured": True,
                    "derived": {"discovery_url": op.url + "/.well-known/openid-configuration"}}
    assert entra["tenant_id"] == ENTRA_TENANT and entra["scopes"] == ["openid", "email", "profile"]
    assert entra["derived"]["issuer"] == f"{op.url}/{ENTRA_TENANT}/v2.0"
    assert entra["derived"]["jwks_uri"] == f"{op.url}/{ENTRA_TENANT}/discovery/v2.0/keys"
    assert got["team_defaults"] == {"budget_cap_usd": 100.0, "tpm_limit": 100000, "rpm_limit": None,
                                    "budget_period": "monthly", "allowed_models": ["gpt-4.1", "claude-sonnet-4-6"]}
    assert got["sync_on_every_signin"] is True


def test_it_is_idempotent_and_round_trips(configure, op, management_client):
    first = configure(provider(op))
    second = configure(provider(op))
    assert first == second
    # A GET answer posted back (read-only fields included) gives the same state.
    again = management_client.post("/api/auth/sso/config", json=second)
    assert again.status_code == 200 and again.json() == second


def test_it_derives_entra_endpoints_from_the_tenant(settings, management_client, op):
    body = config_body({"name": "entra", "type": "entra", "tenant_id": "contoso.onmicrosoft.com", "client_id": "x"})
    settings.SMARTFLOW_ENTRA_AUTHORITY = "https://login.microsoftonline.com"
    got = management_client.post("/api/auth/sso/config", json=body).json()["providers"][0]["derived"]
    assert got["issuer"] == "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0"
    assert got["jwks_uri"] == "https://login.microsoftonline.com/contoso.onmicrosoft.com/discovery/v2.0/keys"
    assert got["token_endpoint"].endswith("/contoso.onmicrosoft.com/oauth2/v2.0/token")


@pytest.mark.parametrize("body, fragment", [
    ({"providers": [{"name": "corp", "type": "oidc", "issuer": "https://idp.example.com", "client_id": "x",
                     "client_secret": "hunter2"}]}, "not accepted"),
    ({"providers": [], "client_secret": "hunter2"}, "not accepted"),
    ({"providers": [{"name": "corp", "type": "saml", "client_id": "x"}]}, "type: must be one of"),
    ({"providers": [{"name": "corp", "type": {"entra": 1}, "client_id": "x"}]}, "type: must be one of"),
    ({"providers": [{"name": "corp", "type": ["oidc"], "client_id": "x"}]}, "type: must be one of"),
    ({"providers": [{"name": "corp", "type": "oidc", "client_id": "x"}]}, "issuer: required"),
    ({"providers": [{"name": "corp", "type": "oidc", "issuer": "http://idp.example.com", "client_id": "x"}]},
     "must use https"),
    ({"providers": [{"name": "e", "type": "entra", "client_id": "x"}]}, "tenant_id: required"),
    ({"providers": [{"name": "e", "type": "entra", "tenant_id": "common", "client_id": "x"}]}, "multi-tenant"),
    ({"providers": [{"name": "Corp Name", "type": "oidc", "issuer": "https://a.example", "client_id": "x"}]},
     "name: required"),
    ({"providers": [{"name": "corp", "type": "oidc", "issuer": "https://a.example"}]}, "client_id: required"),
    ({"providers": [{"name": "c", "type": "oidc", "issuer": "https://a.example", "client_id": "x"},
                    {"name": "c", "type": "oidc", "issuer": "https://b.example", "client_id": "y"}]}, "duplicate"),
    ({"providers": [{"name": "c", "type": "oidc", "issuer": "https://a.example", "client_id": "x",
                     "scopes": ["email"]}]}, "must include 'openid'"),
    ({"providers": [], "team_defaults": {"budget_cap_usd": -1}}, "must not be negative"),
    ({"providers": [], "team_defaults": {"tpm_limit": 1.5}}, "integer"),
    ({"providers": [], "team_defaults": {"allowed_models": "gpt-4.1"}}, "list of model names"),
    ({"providers": [], "sync_on_every_signin": "yes"}, "true or false"),
    ({"providers": [], "colour": "blue"}, "unknown field(s) colour"),
    ({"providers": [{"name": "c", "type": "oidc", "issuer": "https://a.example", "client_id": "x\u0000y"}]},
     "providers[0].client_id: must not contain NUL"),
    ({"providers": [], "team_defaults": {"allowed_models": ["gpt\u0000"]}}, "allowed_models[0]: must not"),
    ([1, 2], "JSON object"),
])
def test_it_rejects_invalid_config_with_a_clear_400(management_client, sso_clean, body, fragment):
    before = management_client.get("/api/auth/sso/config").json()
    response = management_client.post("/api/auth/sso/config", json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]
    assert "hunter2" not in response.text
    assert management_client.get("/api/auth/sso/config").json() == before


def test_it_is_admin_only(gateway, virtual_key, sso_clean):
    for headers in ({}, {"Authorization": f"Bearer {virtual_key}"}):
        with httpx.Client(base_url=gateway.management_url, headers=headers, timeout=10) as client:
            assert client.get("/api/auth/sso/config").status_code in (401, 403)
            assert client.post("/api/auth/sso/config", json={"providers": []}).status_code in (401, 403)
            assert client.post("/api/auth/sso/test", json={"provider": "x"}).status_code in (401, 403)


def test_it_accepts_an_admin_virtual_key(gateway, team, sso_clean):
    from proxy.models import VirtualKey

    raw = VirtualKey.issue(team, name="ops", is_admin=True)[1]
    with httpx.Client(base_url=gateway.management_url, timeout=10,
                      headers={"Authorization": f"Bearer {raw}"}) as client:
        assert client.get("/api/auth/sso/config").status_code == 200


def test_it_sees_a_config_saved_by_another_process_at_once(configure, op, management_client, settings):
    from sso.store import store

    settings.SMARTFLOW_SSO_CONFIG_TTL = 1.0
    configure(provider(op))
    assert [p["name"] for p in management_client.get("/api/auth/sso/config").json()["providers"]] == ["corp"]
    # Another gateway process writes the shared store directly.
    store().set("config", config_body(provider(op, name="other")))
    names = wait_for(lambda: [p["name"] for p in management_client.get("/api/auth/sso/config").json()["providers"]]
                     == ["other"], timeout=1.5)
    assert names


def test_it_tests_a_saved_provider_step_by_step(configure, op, management_client):
    configure()
    body = management_client.post("/api/auth/sso/test", json={"provider": "corp"}).json()
    assert body["success"] is True
    steps = {s["name"]: s for s in body["steps"]}
    assert [s["name"] for s in body["steps"]] == ["discovery", "issuer", "endpoints", "jwks", "client_secret"]
    assert all(s["ok"] for s in body["steps"])
    assert op.url + "/jwks" in steps["jwks"]["detail"]
    assert op.client_secret not in str(body)


def test_it_tests_an_unsaved_entra_provider(op, management_client, settings, sso_clean):
    settings.SMARTFLOW_ENTRA_AUTHORITY = op.url
    body = management_client.post("/api/auth/sso/test", json=entra_provider(op)).json()
    assert body["success"] is True, body
    assert [s["name"] for s in body["steps"]][:2] == ["derive", "discovery"]


def test_it_reports_each_failing_step(op, management_client, monkeypatch, sso_clean):
    from conftest import free_port

    monkeypatch.delenv("OIDC_CLIENT_SECRET")
    dead = f"http://127.0.0.1:{free_port()}"
    body = management_client.post("/api/auth/sso/test", json=provider(op, issuer=dead)).json()
    assert body["success"] is False
    steps = {s["name"]: s for s in body["steps"]}
    assert not steps["discovery"]["ok"] and "Could not reach" in steps["discovery"]["detail"]
    assert not steps["jwks"]["ok"]
    assert not steps["client_secret"]["ok"] and "OIDC_CLIENT_SECRET_CORP" in steps["client_secret"]["detail"]
    # An issuer that does not match the discovery document is called out.
    body = management_client.post("/api/auth/sso/test", json=provider(op, issuer=op.url + "/tenant-x")).json()
    assert body["success"] is False


def test_it_refuses_to_test_an_unknown_provider(management_client, sso_clean):
    response = management_client.post("/api/auth/sso/test", json={"provider": "ghost"})
    assert response.status_code == 404 and response.json()["code"] == "unknown_provider"
    assert management_client.post("/api/auth/sso/test", json={}).status_code == 400
    invalid = management_client.post("/api/auth/sso/test", json={"type": "oidc", "name": "x"})
    assert invalid.status_code == 400 and invalid.json()["steps"][0]["name"] == "config"
