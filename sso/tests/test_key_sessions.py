"""A dashboard session opened with a key ends when the key is revoked or the master key changes."""
import contextlib
import re
import time

import httpx
import pytest
from django.conf import settings
from django.utils import timezone
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

TTL = 0.3


@pytest.fixture
def short_ttl(settings):
    from sso import sessions

    settings.SMARTFLOW_CONFIG_TTL = TTL
    sessions.forget()
    yield
    sessions.forget()


@pytest.fixture
def admin_key(team):
    from proxy.models import VirtualKey

    return VirtualKey.issue(team, name="ops", is_admin=True)


@contextlib.contextmanager
def signed_in(gateway, key):
    """A browser-like client signed in to the dashboard with a key, through the sign-in form."""
    with httpx.Client(base_url=gateway.management_url, timeout=10) as client:
        form = client.get("/dashboard/sso_login.html")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        r = client.post("/dashboard/sso_login.html", data={"api_key": key, "csrfmiddlewaretoken": token})
        assert r.status_code == 302, r.text
        yield client


def page_ok(client) -> bool:
    r = client.get("/dashboard/traces.html", follow_redirects=False)
    assert r.status_code in (200, 302)
    return r.status_code == 200


def api_ok(client) -> bool:
    r = client.get("/api/vas/logs")
    assert r.status_code in (200, 401, 403)
    return r.status_code == 200


def socket_ok(gateway, client) -> bool:
    url = gateway.management_url.replace("http://", "ws://") + "/ws/traces"
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME]}"
    try:
        with connect(url, additional_headers={"Cookie": cookie}, open_timeout=10) as ws:
            return ws.recv(timeout=10) is not None
    except InvalidStatus:
        return False


SURFACES = {"page": lambda gateway, c: page_ok(c), "api": lambda gateway, c: api_ok(c), "socket": socket_ok}


@pytest.mark.parametrize("surface", SURFACES)
def test_revoking_the_admin_key_signs_its_sessions_out(gateway, short_ttl, admin_key, surface):
    key, raw = admin_key
    check = SURFACES[surface]
    with signed_in(gateway, raw) as client:
        assert check(gateway, client)
        time.sleep(TTL + 0.1)
        assert check(gateway, client)  # re-checked past the TTL, and still a live key
        key.revoked_at = timezone.now()
        key.save()
        time.sleep(TTL + 0.1)
        assert not check(gateway, client)  # the first request after the TTL is signed out
        assert not page_ok(client) and not api_ok(client)  # and stays out


@pytest.mark.parametrize("surface", SURFACES)
def test_a_new_master_key_signs_the_old_ones_sessions_out(gateway, short_ttl, master_key, settings, surface):
    check = SURFACES[surface]
    with signed_in(gateway, master_key) as client:
        assert check(gateway, client)
        settings.SMARTFLOW_MASTER_KEY = "sk-sf-the-rotated-master-key"
        time.sleep(TTL + 0.1)
        assert not check(gateway, client)
        assert not page_ok(client)


def test_the_session_keeps_the_keys_hash_never_the_key(gateway, admin_key, master_key):
    from django.contrib.sessions.models import Session

    for raw in (admin_key[1], master_key):
        with signed_in(gateway, raw) as client:
            stored = Session.objects.get(session_key=client.cookies[settings.SESSION_COOKIE_NAME]).get_decoded()
            assert raw not in str(stored) and raw[6:] not in str(stored)
            assert len(stored["smartflow_key_sha256"]) == 64


def test_demoting_the_key_from_admin_signs_it_out(gateway, short_ttl, admin_key):
    key, raw = admin_key
    with signed_in(gateway, raw) as client:
        assert api_ok(client)
        key.is_admin = False
        key.save()
        time.sleep(TTL + 0.1)
        assert not api_ok(client)


def test_the_sync_middleware_path_signs_out_too(db, short_ttl, admin_key, master_key, settings):
    """Django's test client runs the middleware synchronously (WSGI); the served app runs it async."""
    from django.test import Client

    settings.SMARTFLOW_MASTER_KEY = master_key
    key, raw = admin_key
    client = Client()
    assert client.post("/dashboard/sso_login.html", {"api_key": raw}).status_code == 302
    assert client.get("/api/vas/logs").status_code == 200
    key.revoked_at = timezone.now()
    key.save()
    time.sleep(TTL + 0.1)
    assert client.get("/dashboard/traces.html").status_code == 302
    assert client.get("/api/vas/logs").status_code in (401, 403)


def test_an_open_socket_closes_once_its_key_is_revoked(gateway, short_ttl, admin_key, proxy_client):
    from websockets.exceptions import ConnectionClosed

    key, raw = admin_key
    url = gateway.management_url.replace("http://", "ws://") + "/ws/traces"
    with signed_in(gateway, raw) as client:
        cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME]}"
        with connect(url, additional_headers={"Cookie": cookie}, open_timeout=10) as ws:
            assert ws.recv(timeout=10)  # hello
            key.revoked_at = timezone.now()
            key.save()
            time.sleep(TTL + 0.1)
            chat = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "after revocation"}]}
            assert proxy_client.post("/v1/chat/completions", json=chat).status_code == 200
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    message = ws.recv(timeout=10)
                    assert "after revocation" not in message and '"rows"' not in message
            assert closed.value.rcvd.code == 4401
