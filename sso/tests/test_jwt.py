"""The Smartflow JWT on the management API."""
import time

import httpx
import jwt as pyjwt
import pytest

from .conftest import sign_in


@pytest.fixture
def user(db):
    from django.contrib.auth.models import User

    return User.objects.create(username="pat", email="pat@example.com")


def call(gateway, token, path="/api/teams"):
    with httpx.Client(base_url=gateway.management_url, headers={"Authorization": f"Bearer {token}"}) as api:
        return api.get(path)


def test_it_carries_the_user_teams_and_expiry(configure, op, browser, settings):
    configure()
    token = sign_in(browser)[0].json()["token"]
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["username"] == "alice@example.com" and claims["teams"] == ["platform", "research"]
    assert claims["exp"] - claims["iat"] == settings.SMARTFLOW_JWT_TTL_SECONDS
    assert pyjwt.get_unverified_header(token)["alg"] == "HS256"


def test_it_refuses_an_expired_token(gateway, user, settings):
    from sso import tokens

    settings.SMARTFLOW_JWT_TTL_SECONDS = -5
    token, _ = tokens.issue(user, [])
    response = call(gateway, token)
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_it_refuses_a_tampered_token(gateway, user):
    from sso import tokens

    token, _ = tokens.issue(user, [])
    head, _, sig = token.split(".")
    claims = pyjwt.decode(token, options={"verify_signature": False})
    forged = pyjwt.encode({**claims, "staff": True, "sub": "1"}, "guess-" * 8, algorithm="HS256").split(".")[1]
    assert call(gateway, f"{head}.{forged}.{sig}").status_code == 401
    assert call(gateway, pyjwt.encode({**claims}, "another-key-" * 4, algorithm="HS256")).status_code == 401
    assert call(gateway, pyjwt.encode({**claims}, None, algorithm="none")).status_code == 401


def test_a_member_token_is_not_an_admin_token(gateway, user):
    from sso import tokens

    token, _ = tokens.issue(user, [])
    assert call(gateway, token).status_code == 200
    assert call(gateway, token, "/api/auth/sso/config").status_code == 403


def test_a_staff_token_may_configure(gateway, user, sso_clean):
    from sso import tokens

    user.is_staff = True
    user.save()
    token, _ = tokens.issue(user, [])
    assert call(gateway, token, "/api/auth/sso/config").status_code == 200


def test_it_still_accepts_keys(gateway, management_client):
    assert management_client.get("/api/teams").status_code == 200


def test_it_expires_quickly(user):
    from sso import tokens

    _, exp = tokens.issue(user, [])
    assert exp - time.time() <= 3600 + 1
