"""The routing policies' management API and admin: validated bodies (each bad field named), admin
only, effective at once, stored faithfully on PostgreSQL; and spec.validate against any JSON."""
import httpx
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from proxy.routing_policies import spec

POLICY = {"name": "claude-first", "strategy": "failover",
          "targets": [{"provider": "anthropic", "model": "claude-sonnet-4-6"}, {"provider": "openai"}]}
CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def api(routing_policy, management_client):
    yield management_client
    from proxy.models import RoutingPolicy

    RoutingPolicy.objects.all().delete()
    spec.snapshot.invalidate()


def test_a_policy_is_created_read_listed_replaced_and_deleted(api, proxy_client):
    created = api.post("/api/routing/policies", json=POLICY)
    assert created.status_code == 200, created.text
    data = created.json()["data"]
    assert data == {**POLICY, "targets": [{"provider": "anthropic", "model": "claude-sonnet-4-6", "weight": 1},
                                          {"provider": "openai", "model": None, "weight": 1}],
                    "retry": {"attempts": 1, "backoff_ms": 250}, "failover_on": [429, 500, 502, 503, 504, 529,
                                                                                  "connect", "timeout"],
                    "models": [], "teams": [], "sticky": None, "enabled": True, "priority": 100}
    assert api.get("/api/routing/policies/claude-first").json() == {"success": True, "data": data}
    assert api.get("/api/routing/policies").json() == {"success": True, "data": [data]}
    r = proxy_client.post("/v1/chat/completions", json=CHAT)  # effective at once on this process
    assert r.headers["x-smartflow-provider"] == "anthropic"
    replaced = api.put("/api/routing/policies/claude-first", json={**POLICY, "targets": POLICY["targets"][1:],
                                                                  "priority": 5})
    assert replaced.status_code == 200 and replaced.json()["data"]["priority"] == 5
    again = api.put("/api/routing/policies/claude-first", json={**POLICY, "targets": POLICY["targets"][1:],
                                                               "priority": 5})
    assert again.json() == replaced.json()  # the same body twice: the same state
    assert proxy_client.post("/v1/chat/completions", json=CHAT).headers["x-smartflow-provider"] == "openai"
    assert api.delete("/api/routing/policies/claude-first").json() == {"success": True}
    assert api.get("/api/routing/policies/claude-first").status_code == 404
    assert api.delete("/api/routing/policies/claude-first").status_code == 404
    assert api.get("/api/routing/policies").json()["data"] == []


def test_put_creates_a_missing_policy_and_post_refuses_a_taken_name(api):
    assert api.put("/api/routing/policies/new-one", json={**POLICY, "name": "new-one"}).status_code == 200
    r = api.post("/api/routing/policies", json={**POLICY, "name": "new-one"})
    assert r.status_code == 409 and "'name'" in r.json()["error"] and r.json()["success"] is False
    r = api.put("/api/routing/policies/new-one", json={**POLICY, "name": "other"})
    assert r.status_code == 400 and "'name'" in r.json()["error"]


@pytest.mark.parametrize("change,field", [
    ({"strategy": "random"}, "strategy"),
    ({"targets": []}, "targets"),
    ({"targets": [{"provider": "azure"}]}, "targets[0].provider"),
    ({"targets": [{"provider": "openai", "model": "bad name?"}]}, "targets[0].model"),
    ({"targets": [{"provider": "openai", "weight": -1}]}, "targets[0].weight"),
    ({"targets": [{"provider": "openai", "extra": 1}]}, "targets[0]"),
    ({"strategy": "weighted", "targets": [{"provider": "openai", "weight": 0}]}, "targets"),
    ({"retry": {"attempts": 99}}, "retry.attempts"),
    ({"retry": {"attempts": True}}, "retry.attempts"),
    ({"retry": {"backoff_ms": -5}}, "retry.backoff_ms"),
    ({"retry": {"tries": 1}}, "retry"),
    ({"failover_on": [400]}, "failover_on"),
    ({"failover_on": ["always"]}, "failover_on"),
    ({"models": "gpt-4.1"}, "models"),
    ({"teams": ["a\x00b"]}, "teams"),
    ({"sticky": "session"}, "sticky"),
    ({"enabled": "yes"}, "enabled"),
    ({"priority": 1.5}, "priority"),
    ({"name": "has space"}, "name"),
    ({"name": "x\x00"}, "name"),
    ({"colour": "blue"}, "colour"),
])
def test_a_bad_body_is_a_400_naming_the_field(api, change, field):
    r = api.post("/api/routing/policies", json={**POLICY, **change})
    assert r.status_code == 400, r.text
    assert r.json()["success"] is False and f"'{field}'" in r.json()["error"]
    assert api.get("/api/routing/policies").json()["data"] == []


def test_it_is_admin_only(gateway, virtual_key, routing_policy):
    for headers in ({}, {"Authorization": f"Bearer {virtual_key}"}):
        with httpx.Client(base_url=gateway.management_url, headers=headers, timeout=10) as client:
            assert client.get("/api/routing/policies").status_code in (401, 403)
            assert client.post("/api/routing/policies", json=POLICY).status_code in (401, 403)
            assert client.get("/api/routing/policies/x").status_code in (401, 403)
            assert client.put("/api/routing/policies/x", json=POLICY).status_code in (401, 403)
            assert client.delete("/api/routing/policies/x").status_code in (401, 403)


def test_it_stores_unicode_names_and_long_lists(api):
    body = {**POLICY, "teams": ["équipe-研究"] * 3 + [f"t{i}" for i in range(900)], "models": ["m" * 200]}
    r = api.post("/api/routing/policies", json=body)
    assert r.status_code == 200, r.text
    stored = api.get("/api/routing/policies/claude-first").json()["data"]
    assert "équipe-研究" in stored["teams"] and len(stored["teams"]) == 901 and stored["models"] == ["m" * 200]


def test_the_admin_form_validates_like_the_api(admin_client, routing_policy):
    from proxy.models import RoutingPolicy

    page = admin_client.post("/admin/proxy/routingpolicy/add/", {
        "name": "adm", "strategy": "failover", "targets": '[{"provider": "nowhere"}]', "retry": "{}",
        "failover_on": "[]", "models": "[]", "teams": "[]", "sticky": "", "priority": 100, "enabled": "on"},
        SERVER_PORT=8001)
    assert page.status_code == 200 and b"targets[0].provider" in page.content
    page = admin_client.post("/admin/proxy/routingpolicy/add/", {
        "name": "adm", "strategy": "failover", "targets": '[{"provider": "openai"}]', "retry": "{}",
        "failover_on": "[]", "models": "[]", "teams": "[]", "sticky": "", "priority": 100, "enabled": "on"},
        SERVER_PORT=8001)
    assert page.status_code == 302, page.content[:2000]
    row = RoutingPolicy.objects.get(name="adm")
    assert row.targets == [{"provider": "openai", "model": None, "weight": 1}] and row.retry["attempts"] == 1


# --- spec.validate against anything ---------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                                     max_size=4), max_leaves=20)
FIELD_VALUES = st.fixed_dictionaries({}, optional={name: JSON for name in spec.FIELDS})


@hsettings(max_examples=300, deadline=None)
@given(st.one_of(JSON, FIELD_VALUES, FIELD_VALUES.map(lambda d: {**POLICY, **d})))
def test_validate_accepts_a_policy_or_says_why_not(body):
    try:
        normal = spec.validate(body)
    except spec.Invalid as err:
        assert str(err).startswith("'") or str(err).startswith("The body")
        return
    assert spec.validate(normal) == normal  # what is stored validates to itself
    policy = spec.from_dict(normal)
    assert policy.targets and policy.strategy in spec.STRATEGIES


@given(st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=8).filter(lambda w: sum(w) > 0),
       st.floats(min_value=0, max_value=1, exclude_max=True))
def test_draw_picks_a_target_with_weight(weights, point):
    index = spec.draw(weights, point)
    assert weights[index] > 0


def test_draw_splits_the_unit_interval_by_weight():
    assert [spec.draw([3, 1], p) for p in (0.0, 0.74, 0.75, 0.99)] == [0, 0, 1, 1]
    assert [spec.draw([0, 2, 2], p) for p in (0.0, 0.49, 0.5)] == [1, 1, 2]
