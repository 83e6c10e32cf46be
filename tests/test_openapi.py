"""The management API's OpenAPI schema (/api/schema/) and Swagger UI (/api/docs/), on the live gateway.

The schema is checked against the management URLconf (every /api/ route is in it, with its bodies,
errors and auth schemes), and schemathesis drives every operation it describes, looking for server
errors and answers that do not match the schema.
"""
import re
from collections import Counter
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, settings
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from proxy.routing import PROVIDER_NAMES
from sso.tests.conftest import sso_clean  # noqa: F401 (a fresh SSO config, dropped afterwards)
from sso.tests.test_pages import key_sign_in, page  # noqa: F401 (the Chromium fixture)

JSON = {"Accept": "application/vnd.oai.openapi+json"}


def api_routes() -> set[str]:
    """Every /api/ route of the management URLconf, in OpenAPI's path syntax."""
    routes = set()

    def walk(patterns, prefix=""):
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
            elif isinstance(p, URLPattern) and route.startswith("api/") and route not in ("api/schema/", "api/docs/"):
                routes.add("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))
    walk(get_resolver("smartflow.urls_management").url_patterns)
    return routes


def fetch_schema(gateway, master_key) -> dict:
    response = httpx.get(gateway.management_url + "/api/schema/", headers={**JSON, "Authorization": f"Bearer {master_key}"})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_schema_and_docs_need_the_management_auth(gateway, virtual_key):
    for path in ("/api/schema/", "/api/docs/"):
        for headers in ({}, {"Authorization": f"Bearer {virtual_key}"}, {"Authorization": "Bearer ey.x.y"}):
            response = httpx.get(gateway.management_url + path, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert "paths" not in response.text


def test_a_signed_in_member_may_read_the_schema(gateway, team):
    from django.contrib.auth import get_user_model

    from sso import tokens

    member = get_user_model().objects.create_user("member@example.com")  # not staff
    token, _ = tokens.issue(member, [team.name])
    response = httpx.get(gateway.management_url + "/api/schema/", headers={**JSON, "Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.json()["openapi"].startswith("3.")


def test_the_schema_describes_every_route_and_body(gateway, master_key):
    schema = fetch_schema(gateway, master_key)
    assert set(schema["paths"]) >= api_routes() | {"/metrics"}
    schemes = schema["components"]["securitySchemes"]
    assert {(s["type"], s.get("scheme"), s.get("in")) for s in schemes.values()} >= {
        ("http", "bearer", None), ("apiKey", None, "cookie")}
    assert any(s.get("bearerFormat") == "JWT" for s in schemes.values())
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), where
            responses = operation["responses"]
            assert "200" in responses and responses["200"].get("content"), where
            assert any(code.startswith("4") for code in responses), f"{where}: no error answer described"
            if method == "post":
                assert "application/json" in operation["requestBody"]["content"], where
            if operation.get("security") and {} not in operation["security"]:  # auth required
                assert {"401", "403"} <= set(responses), f"{where}: the auth refusals are not described"
    params = {p["name"]: p for p in schema["paths"]["/api/vas/logs"]["get"]["parameters"]}
    assert set(params) >= {"limit", "offset", "q", "provider", "cache", "sort", "cursor"}
    assert set(params["provider"]["schema"]["enum"]) == set(PROVIDER_NAMES)
    assert "-timestamp" in params["sort"]["schema"]["enum"]
    config = schema["paths"]["/api/auth/sso/config"]
    body = config["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][body]["properties"]) == {
        "providers", "team_defaults", "sync_on_every_signin"}
    error = config["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert "oneOf" in schema["components"]["schemas"][error["$ref"].rsplit("/", 1)[1]]


def test_swagger_ui_is_served_from_the_bundled_files(gateway, master_key):
    headers = {"Authorization": f"Bearer {master_key}"}
    html = httpx.get(gateway.management_url + "/api/docs/", headers=headers)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), f"{asset} is not served by the gateway"
        response = httpx.get(gateway.management_url + asset, headers=headers)
        assert response.status_code == 200, asset
    traversal = httpx.get(gateway.management_url + "/static/drf_spectacular_sidecar/../../../settings.py")
    assert traversal.status_code == 404


def test_swagger_ui_renders_in_a_browser_without_a_cdn(page, gateway, master_key, sso_clean):  # noqa: F811
    hosts = []

    def only_loopback(route):
        host = urlsplit(route.request.url).hostname
        hosts.append(host)
        return route.continue_() if host == "127.0.0.1" else route.abort()

    page.route("**/*", only_loopback)
    key_sign_in(page, gateway, master_key)  # the dashboard session opens the docs
    page.wait_for_url(re.compile(r"/dashboard/traces\.html$"))
    page.goto(gateway.management_url + "/api/docs/")
    page.locator(".opblock").first.wait_for(timeout=15000)
    assert page.locator(".opblock").count() >= len(api_routes())
    assert set(hosts) == {"127.0.0.1"}, hosts


@pytest.fixture
def api_schema(gateway, master_key, sso_clean, monkeypatch):  # noqa: F811
    """The live schema. Generated configs name random https IdPs: a dead proxy keeps those off the internet."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return schemathesis.openapi.from_dict(fetch_schema(gateway, master_key))


schema = schemathesis.pytest.from_fixture("api_schema")
CASES: Counter = Counter()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_matches_its_schema_and_never_fails(case, gateway, master_key):
    # POSTs to /api/auth/sso/config change the SSO config: sso_clean (via api_schema) drops it afterwards.
    response = case.call(base_url=gateway.management_url, headers={"Authorization": f"Bearer {master_key}"},
                         timeout=20)
    CASES[f"{case.method} {case.path}"] += 1
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                             content_type_conformance, response_schema_conformance])


@pytest.fixture(scope="module", autouse=True)
def _count_cases():
    yield
    if CASES:  # shown with -s
        print(f"\nschemathesis ran {sum(CASES.values())} cases: {dict(sorted(CASES.items()))}")


def test_the_schema_builds_without_warnings(tmp_path):
    """A warning is a wrong schema: two serializers of one name (both APIs' "Policy") became one component."""
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
