"""Every refusal in the sign-in flow: a clear message, a status, and no session."""
import time

import httpx
import pytest

from .conftest import authorize, provider, sign_in, start


def assert_refused(response, browser, status: int, code: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["code"] == code and body["error"]
    assert "sessionid" not in browser.cookies
    assert "token" not in body
    assert browser.get("/api/teams").status_code in (401, 403)


def test_it_refuses_a_state_from_another_browser(configure, op, browser, gateway):
    configure()
    params = authorize(start(browser))
    with httpx.Client(base_url=gateway.management_url, timeout=10) as attacker:
        response = attacker.get("/api/auth/sso/callback", params=params)
        assert_refused(response, attacker, 400, "state_mismatch")
    # The victim's own sign-in is not burnt by the attempt.
    assert browser.get("/api/auth/sso/callback", params=params).status_code == 200


def test_it_refuses_an_unknown_state(configure, op, browser):
    configure()
    params = authorize(start(browser))
    response = browser.get("/api/auth/sso/callback", params={**params, "state": "forged-state-value"})
    assert_refused(response, browser, 400, "invalid_state")


def test_it_refuses_a_missing_state(configure, op, browser):
    configure()
    params = authorize(start(browser))
    response = browser.get("/api/auth/sso/callback", params={"code": params["code"]})
    assert_refused(response, browser, 400, "missing_state")


def test_it_refuses_a_replayed_callback(configure, op, browser):
    configure()
    first, params = sign_in(browser)
    assert first.status_code == 200
    browser.cookies.clear()
    # The attacker replays the captured callback; the state was used up by the first one.
    browser.cookies.set("smartflow_sso", "x" * 43)
    response = browser.get("/api/auth/sso/callback", params=params)
    assert_refused(response, browser, 400, "invalid_state")


def test_it_refuses_a_replayed_code_with_a_fresh_state(configure, op, browser):
    configure()
    first, params = sign_in(browser)
    assert first.status_code == 200
    browser.cookies.clear()
    fresh = authorize(start(browser))
    response = browser.get("/api/auth/sso/callback", params={"code": params["code"], "state": fresh["state"]})
    assert_refused(response, browser, 400, "code_rejected")


def test_it_refuses_an_expired_state(configure, op, browser, settings):
    configure()
    settings.SMARTFLOW_SSO_STATE_TTL = 1
    params = authorize(start(browser))
    time.sleep(1.2)
    response = browser.get("/api/auth/sso/callback", params=params)
    assert_refused(response, browser, 400, "state_expired")


def test_it_refuses_a_wrong_nonce(configure, op, browser):
    configure()
    op.claim_overrides = {"nonce": "a-nonce-from-another-sign-in"}
    response, _ = sign_in(browser)
    assert_refused(response, browser, 401, "nonce_mismatch")


def test_it_refuses_a_token_without_nonce(configure, op, browser):
    configure()
    op.claim_overrides = {"nonce": None}
    response, _ = sign_in(browser)
    assert_refused(response, browser, 401, "nonce_mismatch")


def test_it_refuses_a_wrong_audience(configure, op, browser):
    configure()
    op.claim_overrides = {"aud": "some-other-application"}
    response, _ = sign_in(browser)
    assert_refused(response, browser, 401, "wrong_audience")


def test_it_refuses_a_wrong_issuer(configure, op, browser):
    configure()
    op.claim_overrides = {"iss": "https://evil.example.com"}
    response, _ = sign_in(browser)
    assert_refused(response, browser, 401, "wrong_issuer")


def test_it_refuses_an_expired_id_token(configure, op, browser):
    configure()
    now = int(time.time())
    op.claim_overrides = {"iat": now - 3600, "exp": now - 600}
    response, _ = sign_in(browser)
    assert_refused(response, browser, 401, "id_token_expired")


def test_it_refuses_a_tampered_id_token(configure, op, browser):
    configure()
    op.tamper_payload = True
    response, _ = sign_in(browser)
    assert_refused(response, browser, 401, "invalid_id_token")
    assert "signature" in response.json()["error"]


def test_it_refuses_an_id_token_signed_with_an_unpublished_key(configure, op, browser):
    configure()
    op.sign_with_foreign_key = True
    response, _ = sign_in(browser)
    assert_refused(response, browser, 401, "invalid_id_token")
    assert "does not publish" in response.json()["error"]


def test_it_refuses_an_unsigned_id_token(configure, op, browser, monkeypatch):
    import jwt as pyjwt

    configure()
    real = op.id_token
    monkeypatch.setattr(op, "id_token", lambda grant: pyjwt.encode(
        pyjwt.decode(real(grant), options={"verify_signature": False}), None, algorithm="none"))
    response, _ = sign_in(browser)
    assert_refused(response, browser, 401, "invalid_id_token")


def test_it_refuses_an_unknown_provider(configure, op, browser):
    configure()
    response = browser.get("/api/auth/sso/login", params={"provider": "nope"})
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_provider" and "corp" in response.json()["error"]
    assert "smartflow_sso" not in browser.cookies


def test_it_refuses_when_the_idp_is_unreachable_at_login(configure, op, browser):
    from conftest import free_port

    configure(provider(op, name="down", issuer=f"http://127.0.0.1:{free_port()}"))
    response = browser.get("/api/auth/sso/login", params={"provider": "down"})
    assert response.status_code == 502
    assert response.json()["code"] == "idp_unreachable"


def test_it_refuses_when_the_idp_is_unreachable_at_the_callback(configure, browser, sso_clean):
    from .op import OpenIDProvider

    other = OpenIDProvider().start()
    try:
        configure(provider(other, name="flaky"))
        params = authorize(start(browser, "flaky"))
    finally:
        other.stop()
    response = browser.get("/api/auth/sso/callback", params=params)
    assert_refused(response, browser, 502, "idp_unreachable")


def test_it_shows_an_idp_error(configure, op, browser):
    configure()
    op.authorize_error = ("access_denied", "The user declined")
    params = authorize(start(browser))
    assert params["error"] == "access_denied"
    response = browser.get("/api/auth/sso/callback", params=params)
    assert_refused(response, browser, 400, "idp_error")
    assert "access_denied" in response.json()["error"] and "declined" in response.json()["error"]


@pytest.mark.parametrize("path", ["/api/auth/sso/config", "/api/teams"])
def test_it_refuses_anonymous_management_calls(gateway, path):
    response = httpx.get(gateway.management_url + path)
    assert response.status_code in (401, 403)


def test_it_never_returns_the_secret(configure, op, management_client, browser):
    configure()
    assert op.client_secret not in management_client.get("/api/auth/sso/config").text
    response, _ = sign_in(browser)
    assert op.client_secret not in response.text


def test_it_lets_only_one_of_two_simultaneous_callbacks_through(configure, op, browser):
    from concurrent.futures import ThreadPoolExecutor

    configure()
    params = authorize(start(browser))
    cookies = dict(browser.cookies)

    def call(_):
        with httpx.Client(base_url=str(browser.base_url), cookies=cookies, timeout=20) as client:
            return client.get("/api/auth/sso/callback", params=params).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(call, range(4)))
    assert statuses.count(200) == 1, statuses
    assert all(s == 400 for s in statuses if s != 200)
