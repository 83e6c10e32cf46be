"""Fixtures of the traces tests: synthetic VAS logs, a signed-in staff user, headless Chromium."""
import itertools
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
_ids = itertools.count(1)


def make_log(**fields):
    """An unsaved VASLog with realistic defaults; ids and timestamps increase."""
    from traces.models import VASLog

    n = next(_ids)
    stamp = fields.pop("timestamp", None) or datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(seconds=n)
    defaults = dict(
        id=f"{int(stamp.timestamp() * 1000):012x}{n:020x}", timestamp=stamp, key_prefix="sk-sf-abcd",
        team="research", client_model="gpt-4.1", provider="openai", upstream_model="gpt-4.1",
        status_code=200, latency_ms=100.0 + n % 50, overhead_ms=1.5, tokens_input=10, tokens_output=5,
        cost_usd="0.00006", cache="miss", compliance="pass",
        stages=[{"name": "auth", "ms": 0.2}, {"name": "upstream_total", "ms": 98.0}],
        prompt=[{"role": "user", "content": f"question number {n}"}],
        response={"choices": [{"index": 0, "message": {"role": "assistant", "content": "an answer"},
                               "finish_reason": "stop"}]},
    )
    defaults.update(fields)
    return VASLog(**defaults)


@pytest.fixture
def logs(db):
    def create(count=1, **fields):
        from traces.models import VASLog

        made = [make_log(**fields) for _ in range(count)]
        VASLog.objects.bulk_create(made)
        return made
    return create


@pytest.fixture
def staff_user(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("operator", "ops@example.com", "unused-password", is_staff=True)


@pytest.fixture
def session_cookie(staff_user):
    """A real Django session for the staff user (no dependence on the sign-in page)."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(staff_user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright (never a downloaded browser).

    Playwright's sync API keeps an event loop running in this thread, so Django
    would refuse database calls here; the flag lifts that for this module only,
    and the loop is gone again when the module's tests are done.
    """
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (make system-deps)")
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, gateway, session_cookie):
    """A 1280-px-wide page signed in to the live gateway's management port."""
    from django.conf import settings

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session_cookie,
                          "url": gateway.management_url}])
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def screenshot():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def shoot(page, name, **options):
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), **options)
        return path
    return shoot
