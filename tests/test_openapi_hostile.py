"""What schemathesis may not happen upon in a short run: NUL characters, which PostgreSQL refuses to store or compare."""
import base64
import json

import httpx
import pytest

from sso.tests.conftest import sso_clean  # noqa: F401

CURSOR_WITH_NUL = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00+00:00", "a\u0000"]).encode()).decode()


@pytest.mark.parametrize("url", ["/api/vas/logs?q=a%00b", "/api/vas/logs?cursor=%00",
                                 f"/api/vas/logs?cursor={CURSOR_WITH_NUL}",
                                 "/api/auth/sso/login?provider=a%00", "/api/auth/sso/callback?state=a%00&code=x"])
def test_a_nul_in_a_query_is_a_clear_400_or_404(gateway, master_key, sso_clean, url):  # noqa: F811
    response = httpx.get(gateway.management_url + url, headers={"Authorization": f"Bearer {master_key}"})
    assert response.status_code in (400, 404), response.text
    assert response.json()["success"] is False


def test_a_nul_in_the_sso_config_is_a_clear_400(gateway, master_key, sso_clean):  # noqa: F811
    body = {"providers": [{"name": "c", "type": "oidc", "issuer": "https://a.example", "client_id": "x\u0000"}]}
    response = httpx.post(gateway.management_url + "/api/auth/sso/config", json=body,
                          headers={"Authorization": f"Bearer {master_key}"})
    assert response.status_code == 400 and "NUL" in response.json()["error"], response.text


@pytest.mark.parametrize("log_id", ["ab%00cd", "ab%0Acd", "x" * 300, "f" * 33, "%E2%80%AE"])
def test_a_malformed_log_id_is_a_404(gateway, master_key, log_id):
    # A NUL reached PostgreSQL in the lookup and answered 500.
    response = httpx.get(gateway.management_url + "/api/vas/logs/" + log_id,
                         headers={"Authorization": f"Bearer {master_key}"})
    assert response.status_code == 404, response.text
    assert response.json()["success"] is False
