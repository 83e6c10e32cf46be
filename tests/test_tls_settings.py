"""Behind a TLS-terminating proxy: the settings a deployment sets, read from the environment, and what they change."""
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from sso.tests.conftest import op, op_server, sso_clean  # noqa: F401
from sso.tests.conftest import config_body, provider

ROOT = Path(__file__).resolve().parents[1]
READ = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({"hosts": s.ALLOWED_HOSTS, "origins": s.CSRF_TRUSTED_ORIGINS,
                  "session_secure": s.SESSION_COOKIE_SECURE, "csrf_secure": s.CSRF_COOKIE_SECURE,
                  "proxy_header": getattr(s, "SECURE_PROXY_SSL_HEADER", None), "hsts": s.SECURE_HSTS_SECONDS}))
"""
TLS_VARS = ("DJANGO_ALLOWED_HOSTS", "DJANGO_CSRF_TRUSTED_ORIGINS", "SMARTFLOW_SECURE_COOKIES",
            "SMARTFLOW_TRUST_FORWARDED_PROTO", "SMARTFLOW_HSTS_SECONDS")


def settings_with(tmp_path, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in TLS_VARS}
    base.update(DJANGO_SETTINGS_MODULE="smartflow.settings", SMARTFLOW_DATA_DIR=str(tmp_path), **env)
    result = subprocess.run([sys.executable, "-c", READ], cwd=ROOT, env=base, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_deployment_behind_tls_sets_hosts_origins_cookies_scheme_and_hsts(tmp_path):
    got = settings_with(tmp_path, DJANGO_ALLOWED_HOSTS="gw.example.com, admin.example.com",
                        DJANGO_CSRF_TRUSTED_ORIGINS="https://admin.example.com",
                        SMARTFLOW_SECURE_COOKIES="1", SMARTFLOW_TRUST_FORWARDED_PROTO="true",
                        SMARTFLOW_HSTS_SECONDS="31536000")
    assert got["hosts"][:2] == ["gw.example.com", "admin.example.com"]
    assert "127.0.0.1" in got["hosts"]  # the container's healthcheck
    assert got["origins"] == ["https://admin.example.com"]
    assert got["session_secure"] is got["csrf_secure"] is True
    assert got["proxy_header"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert got["hsts"] == 31536000


def test_unset_or_empty_variables_keep_the_defaults(tmp_path):
    # docker compose passes `${VAR:-}` as an empty string: that must not mean "no host is allowed".
    got = settings_with(tmp_path, **{var: "" for var in TLS_VARS})
    assert got == {"hosts": ["*"], "origins": [], "session_secure": False, "csrf_secure": False,
                   "proxy_header": None, "hsts": 0}


def login(client, **headers):
    """GET /api/auth/sso/login through Django (no uvicorn, which trusts X-Forwarded-Proto from loopback peers)."""
    response = client.get("/api/auth/sso/login", {"provider": "corp"}, headers=headers)
    assert response.status_code == 200, response.content
    redirect_uri = dict(httpx.URL(response.json()["auth_url"]).params)["redirect_uri"]
    return redirect_uri, response.cookies["smartflow_sso"]["secure"]


def test_the_forwarded_scheme_is_trusted_only_when_configured(op, db, settings):  # noqa: F811
    from django.test import Client

    from sso import config

    config.save(config.parse(config_body(provider(op))))
    client = Client()
    # A client claiming https is not believed by default ...
    uri, secure = login(client, x_forwarded_proto="https")
    assert uri.startswith("http://") and not secure
    # ... but is behind a proxy that sets the header itself (SMARTFLOW_TRUST_FORWARDED_PROTO=1).
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    uri, secure = login(client, x_forwarded_proto="https")
    assert uri.startswith("https://") and secure
    uri, secure = login(client, x_forwarded_proto="http")
    assert uri.startswith("http://") and not secure


def test_secure_cookies_cover_the_sign_in_binding_cookie(op, db, settings):  # noqa: F811
    from django.test import Client

    from sso import config

    config.save(config.parse(config_body(provider(op))))
    settings.SESSION_COOKIE_SECURE = True  # SMARTFLOW_SECURE_COOKIES=1, where the proxy sends no scheme
    assert login(Client())[1]
