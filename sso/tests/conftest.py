"""SSO fixtures: a real OpenID Provider on loopback, a clean SSO store, and sign-in helpers."""
import contextlib

import httpx
import pytest
from django.db import DatabaseError

from .op import CLIENT_ID, CLIENT_SECRET, ENTRA_TENANT, OpenIDProvider


@pytest.fixture(scope="session")
def op_server():
    with OpenIDProvider() as op:
        yield op


@pytest.fixture
def op(op_server, sso_clean):
    op_server.reset()
    yield op_server
    op_server.reset()


@pytest.fixture
def sso_clean(monkeypatch, settings):
    """No SSO config, no cached discovery or keys, and the client secret in the environment."""
    from sso import config, oidc
    from sso.store import store

    monkeypatch.setenv("OIDC_CLIENT_SECRET", CLIENT_SECRET)
    settings.SMARTFLOW_SSO_CONFIG_TTL = 0.0  # tests change the config in between requests
    with contextlib.suppress(DatabaseError, RuntimeError):  # the database store needs a db fixture
        store().delete(config.STORE_KEY)
    config.forget()
    oidc.forget()
    yield
    config.forget()
    oidc.forget()
    with contextlib.suppress(DatabaseError, RuntimeError):  # leave no test config in a shared Redis
        store().delete(config.STORE_KEY)


def provider(op, name="corp", **extra):
    return {"name": name, "type": "oidc", "issuer": op.url, "client_id": CLIENT_ID,
            "scopes": ["openid", "email", "profile", "groups"], **extra}


def entra_provider(op, name="entra", **extra):
    return {"name": name, "type": "entra", "tenant_id": ENTRA_TENANT, "client_id": CLIENT_ID, **extra}


def config_body(*providers, **kwargs):
    return {"providers": list(providers),
            "team_defaults": kwargs.get("team_defaults", {"budget_cap_usd": 100.0, "tpm_limit": 100000,
                                                          "allowed_models": ["gpt-4.1", "claude-sonnet-4-6"]}),
            "sync_on_every_signin": kwargs.get("sync", True)}


@pytest.fixture
def configure(management_client, op, settings):
    """Saves an SSO config through the API (and points Entra at the test OP)."""
    settings.SMARTFLOW_ENTRA_AUTHORITY = op.url

    def save(*providers, **kwargs):
        body = config_body(*(providers or (provider(op),)), **kwargs)
        response = management_client.post("/api/auth/sso/config", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    return save


@pytest.fixture
def browser(gateway):
    """An unauthenticated client that keeps cookies, as a browser does."""
    with httpx.Client(base_url=gateway.management_url, timeout=30) as client:
        yield client


def start(browser, provider_name="corp"):
    response = browser.get("/api/auth/sso/login", params={"provider": provider_name})
    assert response.status_code == 200, response.text
    return response.json()["auth_url"]


def authorize(auth_url):
    """Visits the IdP's authorize URL (auto-consent) and returns the callback query it redirects to."""
    response = httpx.get(auth_url, follow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    location = httpx.URL(response.headers["location"])
    return dict(location.params)


def sign_in(browser, provider_name="corp"):
    params = authorize(start(browser, provider_name))
    return browser.get("/api/auth/sso/callback", params=params), params
