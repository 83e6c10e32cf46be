"""The trace page's Routing tab draws a policy's chain of attempts, and the page and the list API
filter by policy and arm (headless Chromium against the live gateway)."""
import httpx
import pytest

from conftest import MASTER_KEY

from .test_dashboard import open_page, row_ids, written

CHAT = {"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def failover_policy(gateway):
    from proxy.models import RoutingPolicy
    from proxy.routing_policies import breaker, spec

    breaker.current().reset()
    for name, targets in (("claude-then-gpt", [{"provider": "anthropic", "model": "claude-sonnet-4-6"},
                                               {"provider": "openai", "model": "gpt-4.1"}]),
                          ("ab", [{"provider": "openai", "model": "gpt-4.1", "weight": 1},
                                  {"provider": "gemini", "model": "gemini-2.5-flash", "weight": 1}])):
        data = spec.validate({"name": name, "strategy": "weighted" if name == "ab" else "failover",
                              "targets": targets, "retry": {"attempts": 0}, "sticky": "user" if name == "ab" else None,
                              "models": ["gpt-4.1"] if name == "ab" else []})
        RoutingPolicy.objects.create(**{k: v for k, v in data.items() if k != "sticky"}, sticky=data["sticky"] or "")
    spec.reload()
    yield
    RoutingPolicy.objects.all().delete()
    spec.reload()
    breaker.current().reset()


def test_the_routing_tab_draws_the_chain(page, gateway, proxy_client, fake_upstream, failover_policy, screenshot):
    fake_upstream.script("anthropic", status=529)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    log_id = r.headers["x-smartflow-request-id"]
    written(gateway, log_id)
    open_page(page, gateway)
    page.click(f'tr.row[data-id="{log_id}"]')
    panel = page.locator("tr.detail")
    panel.locator('.tabs button[data-tab="routing"]').click()
    pane = panel.locator(".tabpane[data-pane=routing]")
    hops = pane.locator(".chain .hop")
    assert hops.count() == 2
    assert "anthropic/claude-sonnet-4-6" in hops.nth(0).text_content() and "529" in hops.nth(0).text_content()
    assert "failed" in hops.nth(0).get_attribute("class")
    assert "openai/gpt-4.1" in hops.nth(1).text_content() and "served" in hops.nth(1).get_attribute("class")
    text = pane.text_content()
    for expected in ("claude-then-gpt", "failover", "Yes", "Overloaded"):
        assert expected in text, expected
    screenshot(page, "traces-tab-routing-failover")


def test_the_page_and_the_api_filter_by_policy_and_arm(page, gateway, proxy_client, failover_policy):
    by_arm: dict[str, list[str]] = {}
    for i in range(12):
        r = proxy_client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4.1", "user": f"u{i}"})
        by_arm.setdefault(f"{r.headers['x-smartflow-provider']}/{r.headers['x-smartflow-model']}", []).append(
            r.headers["x-smartflow-request-id"])
    plain = proxy_client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4.1"},
                              headers={"x-smartflow-provider": "openai"}).headers["x-smartflow-request-id"]
    written(gateway, plain, *(i for ids in by_arm.values() for i in ids))
    assert set(by_arm) == {"openai/gpt-4.1", "gemini/gemini-2.5-flash"}
    api = httpx.Client(base_url=gateway.management_url, headers={"Authorization": f"Bearer {MASTER_KEY}"})
    for arm, ids in by_arm.items():
        listed = api.get("/api/vas/logs", params={"policy": "ab", "arm": arm}).json()
        assert sorted(row["id"] for row in listed["data"]) == sorted(ids) and listed["total"] == len(ids)
    assert api.get("/api/vas/logs", params={"policy": "ab"}).json()["total"] == 12
    assert api.get("/api/vas/logs", params={"policy": "x\x00"}).status_code == 400
    open_page(page, gateway)
    page.fill("#policy", "ab")
    page.fill("#arm", "gemini/gemini-2.5-flash")
    page.click("#toolbar button[type=submit]")
    page.wait_for_function("() => location.search.includes('arm=')")
    count = len(by_arm["gemini/gemini-2.5-flash"])
    page.wait_for_function(f"() => document.querySelectorAll('#rows tr.row').length === {count}")
    assert sorted(row_ids(page)) == sorted(by_arm["gemini/gemini-2.5-flash"])
    open_page(page, gateway, "?policy=ab")
    assert sorted(row_ids(page)) == sorted(i for ids in by_arm.values() for i in ids) and plain not in row_ids(page)
