"""The sign-in and SSO config pages, and the full browser sign-in, in headless Chromium."""
import re
from pathlib import Path

import httpx
import pytest

from .conftest import entra_provider, provider

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture
def page(gateway, monkeypatch):
    """A fresh Chromium page; Playwright is started after the database and stopped before it is flushed."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed")
    # Playwright's sync API keeps an event loop in this thread; the ORM calls the tests make here are
    # still plain synchronous code, so Django's async-safety check would be a false alarm.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page()
        context.close()
        browser.close()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def key_sign_in(page, gateway, key, next_url=""):
    page.goto(gateway.management_url + "/dashboard/sso_login.html" + (f"?next={next_url}" if next_url else ""))
    page.fill("#api_key", key)
    page.click("#key-submit")


def test_login_page_shows_a_button_per_provider(page, gateway, configure, op):
    configure(provider(op), provider(op, name="okta-main", type="okta"), entra_provider(op))
    page.goto(gateway.management_url + "/dashboard/sso_login.html")
    buttons = page.locator(".sso-button")
    assert buttons.count() == 3
    labels = buttons.all_inner_texts()
    assert "Sign in with OpenID Connect (corp)" in labels[0]
    assert "Okta" in labels[1] and "Microsoft" in labels[2]
    assert page.locator("#key-form input[name=csrfmiddlewaretoken]").count() == 1
    shot(page, "sso_login")


def test_login_page_without_sso_offers_the_key(page, gateway, sso_clean):
    page.goto(gateway.management_url + "/dashboard/sso_login.html")
    assert page.locator("#no-sso").is_visible()
    assert page.locator(".sso-button").count() == 0
    assert page.locator("#api_key").is_visible()


def test_key_sign_in_opens_the_dashboard(page, gateway, master_key, sso_clean):
    key_sign_in(page, gateway, master_key)
    page.wait_for_url(re.compile(r"/dashboard/traces\.html$"))
    cookies = {c["name"] for c in page.context.cookies()}
    assert "sessionid" in cookies
    assert page.request.get(gateway.management_url + "/api/teams").status == 200


def test_key_sign_in_refuses_a_team_key(page, gateway, virtual_key, sso_clean):
    key_sign_in(page, gateway, virtual_key)
    assert "not accepted" in page.locator("#key-error").inner_text()
    assert "sessionid" not in {c["name"] for c in page.context.cookies()}
    shot(page, "sso_login_key_refused")


def test_config_page_requires_an_admin_session(page, gateway, sso_clean):
    page.goto(gateway.management_url + "/dashboard/sso_config.html")
    assert "/dashboard/sso_login.html?next=/dashboard/sso_config.html" in page.url


def test_config_page_reads_saves_and_tests(page, gateway, master_key, configure, op, management_client):
    configure(provider(op), entra_provider(op))
    key_sign_in(page, gateway, master_key, next_url="/dashboard/sso_config.html")
    page.wait_for_url(re.compile(r"/dashboard/sso_config\.html$"))
    cards = page.locator("#providers .provider")
    cards.first.wait_for()
    assert cards.count() == 2
    entra = cards.nth(1)
    assert entra.locator('[data-f="tenant_id"]').is_visible()
    assert "auto-derived" in entra.locator("[data-jwks-hint]").inner_text()
    assert entra.locator('[data-f="jwks_uri"]').get_attribute("placeholder").endswith("/discovery/v2.0/keys")
    assert not cards.first.locator('[data-f="tenant_id"]').is_visible()

    # Edit the team defaults and the toggle, then save through the API.
    page.fill("#budget", "250")
    page.select_option("#period", "daily")
    page.fill("#rpm", "120")
    page.fill("#models", "gpt-4.1, gpt-4.1-mini")
    page.uncheck("#sync")
    page.click("#save")
    page.locator("#message.ok").wait_for()
    saved = management_client.get("/api/auth/sso/config").json()
    assert saved["team_defaults"]["budget_cap_usd"] == 250.0
    assert (saved["team_defaults"]["budget_period"], saved["team_defaults"]["rpm_limit"]) == ("daily", 120)
    assert saved["team_defaults"]["allowed_models"] == ["gpt-4.1", "gpt-4.1-mini"]
    assert saved["sync_on_every_signin"] is False
    assert [p["name"] for p in saved["providers"]] == ["corp", "entra"]
    shot(page, "sso_config")

    # A validation error is shown, and nothing is saved.
    cards.first.locator('[data-f="client_id"]').fill("")
    page.click("#save")
    page.locator("#message.error").wait_for()
    assert "client_id" in page.locator("#message").inner_text()

    # Test connection runs the steps against the IdP.
    page.locator("#providers .provider").nth(1).locator("[data-test]").click()
    page.locator("#test-summary").wait_for()
    assert "passed" in page.locator("#test-summary").inner_text()
    assert page.locator("#test-steps tbody tr").count() >= 5
    assert page.locator("#cli").inner_text().count("curl") == 4
    shot(page, "sso_config_test_connection")


def test_full_browser_sign_in(page, gateway, configure, op):
    configure()
    page.goto(gateway.management_url + "/dashboard/sso_login.html")
    page.click(".sso-button[data-provider=corp]")
    page.wait_for_url(re.compile(r"/dashboard/traces\.html$"))
    assert "sessionid" in {c["name"] for c in page.context.cookies()}
    # The browser session now opens the management API, and the teams were synced.
    teams = page.request.get(gateway.management_url + "/api/teams").json()["data"]
    assert {t["name"] for t in teams} == {"platform", "research"}
    assert all("alice@example.com" in t["members"] for t in teams)
    assert page.evaluate("sessionStorage.getItem('smartflow_jwt')").count(".") == 2
    # The code never stays in the address bar or history.
    assert "code=" not in page.url
    shot(page, "sso_signed_in")


def test_teams_table_after_sign_in(page, gateway, configure, op, master_key):
    configure()
    page.goto(gateway.management_url + "/dashboard/sso_login.html")
    page.click(".sso-button[data-provider=corp]")
    page.wait_for_url(re.compile(r"/dashboard/traces\.html$"))
    page.context.clear_cookies()
    key_sign_in(page, gateway, master_key, next_url="/dashboard/sso_config.html")
    page.wait_for_url(re.compile(r"/dashboard/sso_config\.html$"))
    rows = page.locator("#teams tbody tr")
    page.wait_for_function("document.querySelectorAll('#teams tbody tr td').length > 1")
    text = rows.all_inner_texts()
    assert any("research" in r and "alice@example.com" in r and "sso" in r for r in text)
    shot(page, "sso_config_teams")


def test_browser_shows_an_idp_error(page, gateway, configure, op):
    configure()
    op.authorize_error = ("access_denied", "The user declined to consent")
    page.goto(gateway.management_url + "/dashboard/sso_login.html")
    page.click(".sso-button[data-provider=corp]")
    page.locator("#error").wait_for()
    text = page.locator("#error").inner_text()
    assert "access_denied" in text and "declined" in text
    assert "sessionid" not in {c["name"] for c in page.context.cookies()}
    shot(page, "sso_login_idp_error")


def test_browser_shows_a_refused_callback(page, gateway, configure, op):
    configure()
    op.claim_overrides = {"aud": "another-app"}
    page.goto(gateway.management_url + "/dashboard/sso_login.html")
    page.click(".sso-button[data-provider=corp]")
    page.locator("#error").wait_for()
    assert "another application" in page.locator("#error").inner_text()
    assert "/dashboard/sso_login.html" in page.url


def test_forms_need_the_csrf_token(gateway, master_key, sso_clean):
    with httpx.Client(base_url=gateway.management_url, timeout=10) as client:
        refused = client.post("/dashboard/sso_login.html", data={"api_key": master_key})
        assert refused.status_code == 403
        page = client.get("/dashboard/sso_login.html")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        signed_in = client.post("/dashboard/sso_login.html", data={"api_key": master_key,
                                                                    "csrfmiddlewaretoken": token})
        assert signed_in.status_code == 302 and signed_in.headers["location"] == "/dashboard/traces.html"
        # Signed in by session: API writes still need the CSRF header.
        assert client.post("/api/auth/sso/config", json={"providers": []}).status_code == 403
        ok = client.post("/api/auth/sso/config", json={"providers": []},
                         headers={"X-CSRFToken": client.cookies["csrftoken"]})
        assert ok.status_code == 200


def test_key_sign_in_ignores_an_offsite_next(gateway, master_key, sso_clean):
    with httpx.Client(base_url=gateway.management_url, timeout=10) as client:
        page = client.get("/dashboard/sso_login.html")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = client.post("/dashboard/sso_login.html", data={
            "api_key": master_key, "csrfmiddlewaretoken": token, "next": "https://evil.example.com/"})
        assert response.headers["location"] == "/dashboard/traces.html"
