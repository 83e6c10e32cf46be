"""GET/POST /api/guardrails and GET/PUT/DELETE /api/guardrails/{name}, and the admin, on the
live management port; a change takes effect on the proxy without a restart."""
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.guardrails import rules as R
from proxy.models import GuardrailPolicy, Team, VirtualKey

EMAIL = "jane.roe@example.org"
POLICY = {"name": "pii-out", "kind": "pii", "entities": ["EMAIL_ADDRESS"], "action": "block", "on": "prompt",
          "teams": [], "enabled": True}


def chat(proxy_client, text=f"mail {EMAIL}"):
    return proxy_client.post("/v1/chat/completions", json={"model": "gpt-4.1",
                                                           "messages": [{"role": "user", "content": text}]})


def test_create_read_replace_delete_and_effect(gateway, management_client, proxy_client, fake_upstream):
    assert management_client.get("/api/guardrails").json() == {"success": True, "data": []}
    created = management_client.post("/api/guardrails", json=POLICY)
    assert created.status_code == 200, created.text
    assert created.json()["data"] == {**POLICY, "pattern": "", "words": []}
    assert chat(proxy_client).status_code == 400  # at once on this process
    assert management_client.post("/api/guardrails", json=POLICY).status_code == 409
    assert management_client.get("/api/guardrails/pii-out").json()["data"]["action"] == "block"
    replaced = management_client.put("/api/guardrails/pii-out", json={**POLICY, "action": "redact"})
    assert replaced.status_code == 200 and replaced.json()["data"]["action"] == "redact"
    reply = chat(proxy_client)
    assert reply.status_code == 200 and EMAIL not in reply.text
    assert management_client.put("/api/guardrails/nope", json={**POLICY, "name": "nope"}).status_code == 404
    assert management_client.delete("/api/guardrails/pii-out").json() == {"success": True}
    assert management_client.get("/api/guardrails/pii-out").status_code == 404
    reply = chat(proxy_client)
    assert reply.status_code == 200 and EMAIL in reply.text


@pytest.mark.parametrize("body, field", [
    ({**POLICY, "kind": "regex", "entities": [], "pattern": r"(\w+)\1"}, "pattern"),
    ({**POLICY, "kind": "regex", "entities": [], "pattern": r"secret\C"}, "pattern"),  # a match could end mid-character
    ({**POLICY, "entities": ["EMAIL", "PHONE_NUMBER"]}, "entities"),
    ({**POLICY, "action": "quarantine"}, "action"),
    ({**POLICY, "on": "sideways"}, "on"),
    ({**POLICY, "name": "x" * 101}, "name"),
    ({**POLICY, "teams": [1, 2]}, "teams"),
])
def test_bad_bodies_are_400s_naming_the_field(gateway, management_client, body, field):
    reply = management_client.post("/api/guardrails", json=body)
    assert reply.status_code == 400 and reply.json()["success"] is False
    assert reply.json()["error"].startswith(field)
    assert management_client.put("/api/guardrails/pii-out", json=body).status_code in (400, 404)
    assert GuardrailPolicy.objects.count() == 0


def test_not_json_is_a_400(gateway, management_client):
    reply = management_client.post("/api/guardrails", content=b"{nope", headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["success"] is False


def test_only_admins_manage_policies(gateway, management_client):
    team = Team.objects.create(name="sales")
    member_key = VirtualKey.issue(team)[1]
    admin_key = VirtualKey.issue(team, is_admin=True)[1]
    management_client.post("/api/guardrails", json=POLICY)
    for method, path in (("GET", "/api/guardrails"), ("POST", "/api/guardrails"), ("GET", "/api/guardrails/pii-out"),
                         ("PUT", "/api/guardrails/pii-out"), ("DELETE", "/api/guardrails/pii-out")):
        for headers in ({}, {"Authorization": f"Bearer {member_key}"}, {"Authorization": "Bearer sk-sf-wrong"}):
            reply = httpx.request(method, gateway.management_url + path, json=POLICY, headers=headers)
            assert reply.status_code in (401, 403), (method, path, headers)
    assert GuardrailPolicy.objects.get().action == "block"
    reply = httpx.get(gateway.management_url + "/api/guardrails", headers={"Authorization": f"Bearer {admin_key}"})
    assert reply.status_code == 200 and len(reply.json()["data"]) == 1


def test_the_admin_validates_like_the_api(gateway, client, django_user_model, proxy_client):
    admin = django_user_model.objects.create_superuser("root", "root@example.org", "pw")
    client.force_login(admin)
    url = "/admin/proxy/guardrailpolicy/add/"
    form = {"name": "tickets", "kind": "regex", "pattern": r"(a)\1", "entities": "[]", "words": "[]",
            "action": "redact", "on": "prompt", "teams": "[]", "enabled": "on"}
    reply = client.post(url, form, SERVER_PORT=gateway.management_port)
    assert reply.status_code == 200 and b"linear-time" in reply.content
    assert not GuardrailPolicy.objects.exists()
    reply = client.post(url, {**form, "pattern": r"TCK-\d{6}"}, SERVER_PORT=gateway.management_port)
    assert reply.status_code == 302, reply.content[:2000]
    sent = chat(proxy_client, "ticket TCK-123456 please")
    assert sent.status_code == 200 and "123456" not in sent.text and "<tickets>" in sent.text


@given(st.dictionaries(st.sampled_from(["name", "kind", "entities", "pattern", "words", "action", "on", "teams",
                                        "enabled", "other"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                                 st.lists(st.text(max_size=10), max_size=3))))
@settings(max_examples=300, deadline=None)
def test_any_body_is_accepted_or_refused_with_a_field(body):
    try:
        policy = R.validate(body)
    except R.Invalid as exc:
        assert exc.field in body or exc.field in ("name", "kind", "pattern", "words")
        return
    R.Rule.compile(policy)  # whatever validates, compiles
