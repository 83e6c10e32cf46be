"""/dashboard/traces.html driven in headless Chromium against the live gateway."""
import json
import re
from urllib.parse import urlencode

import httpx
import pytest

from traces.models import VASLog

from conftest import wait_for

from .conftest import make_log

CHAT = {"model": "gpt-4.1", "messages": [{"role": "system", "content": "You are terse."},
                                         {"role": "user", "content": "What is the capital of France?"}]}


def proxy(proxy_client, provider=None, content=None, model="gpt-4.1") -> str:
    body = dict(CHAT, model=model)
    if content:
        body["messages"] = [{"role": "user", "content": content}]
    headers = {"x-smartflow-provider": provider} if provider else {}
    r = proxy_client.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.headers["x-smartflow-request-id"]


def written(gateway, *ids):
    """The gateway records a trace just after answering: wait until these are in the table."""
    def done():
        gateway.flush_traces()
        return VASLog.objects.filter(pk__in=ids).count() == len(ids)
    wait_for(done)


def open_page(page, gateway, query=""):
    page.goto(f"{gateway.management_url}/dashboard/traces.html{query}")
    page.wait_for_selector("#rows")


def row_ids(page) -> list[str]:
    return page.eval_on_selector_all("#rows tr.row", "rows => rows.map(r => r.dataset.id)")


def test_it_sends_signed_out_visitors_to_sign_in(gateway):
    r = httpx.get(f"{gateway.management_url}/dashboard/traces.html", follow_redirects=False)
    assert r.status_code == 302
    assert r.headers["location"].startswith("/dashboard/sso_login.html?next=")


def test_rows_appear_after_proxied_requests(page, gateway, proxy_client, screenshot):
    sent = [proxy(proxy_client), proxy(proxy_client, "anthropic"), proxy(proxy_client, "gemini"),
            proxy(proxy_client, "ollama")]
    written(gateway, *sent)
    open_page(page, gateway)
    assert row_ids(page) == list(reversed(sent))  # newest first
    first = page.locator("#rows tr.row").first
    assert "ollama" in first.text_content() and "qwen2.5:14b" in first.text_content()
    assert re.search(r"\d+(\.\d+)? ms", first.locator("td").nth(4).text_content())
    assert first.locator("td").nth(5).text_content().startswith("15")  # 10 in + 5 out
    assert page.locator("#total").text_content() == "4 requests"
    screenshot(page, "traces-list")


def test_each_tab_shows_its_content(page, gateway, proxy_client, screenshot):
    long_prompt = "Explain the request lifecycle. " * 120
    request_id = proxy(proxy_client, content=long_prompt)
    written(gateway, request_id)
    open_page(page, gateway)
    page.click(f'tr.row[data-id="{request_id}"]')
    panel = page.locator("tr.detail")
    panel.locator(".tabpane[data-pane=overview]").wait_for()
    overview = panel.locator(".tabpane[data-pane=overview]").text_content()
    for text in ("Gateway overhead", "Total latency", "openai", "gpt-4.1", request_id, "10 / 5", "$0.000060"):
        assert text in overview, text
    screenshot(page, "traces-tab-overview")

    def show(tab):
        panel.locator(f'.tabs button[data-tab="{tab}"]').click()
        pane = panel.locator(f".tabpane[data-pane={tab}]")
        assert pane.is_visible()
        return pane

    content = show("content")
    assert "Explain the request lifecycle." in content.text_content()
    assert "echo: Explain the request lifecycle." in content.text_content()
    scroll = content.locator(".msg pre").first.evaluate("el => [el.scrollHeight, el.clientHeight]")
    assert scroll[0] > scroll[1]  # long content scrolls inside its box
    screenshot(page, "traces-tab-prompt-response")

    timeline = show("timeline")
    log = VASLog.objects.get(pk=request_id)
    assert timeline.locator(".bar").count() == len(log.stages)
    widths = timeline.locator(".bar").evaluate_all("bars => bars.map(b => parseFloat(b.style.width))")
    ms = [s["ms"] for s in log.stages]
    biggest = ms.index(max(ms))
    assert widths.index(max(widths)) == biggest  # proportional to time
    for stage in log.stages:
        assert stage["name"] in timeline.text_content()
    screenshot(page, "traces-tab-timeline")

    guardrails = show("guardrails")
    assert "None evaluated" in guardrails.text_content()
    routing = show("routing")
    assert "openai/gpt-4.1" in routing.text_content()
    assert "Fallback used" in routing.text_content() and "No" in routing.text_content()
    assert "Override header" in routing.text_content()
    screenshot(page, "traces-tab-routing")


def test_guardrails_and_routing_details_are_shown(page, gateway, screenshot):
    log = make_log(compliance="flagged", guardrails={"policies": ["pii-redaction", "prompt-injection"],
                                                      "pii": ["email", "phone"], "risk_score": 0.72},
                   routing={"override": "anthropic", "chain": ["anthropic/claude-sonnet-4-6", "openai/gpt-4.1"],
                            "fallback_used": True, "reason": "tier table", "tier": "balanced",
                            "tier_inferred": False},
                   provider="openai", upstream_model="gpt-4.1", client_model="claude-sonnet-4-6")
    log.save()
    open_page(page, gateway)
    page.click(f'tr.row[data-id="{log.id}"]')
    panel = page.locator("tr.detail")
    panel.locator('.tabs button[data-tab="guardrails"]').click()
    text = panel.locator(".tabpane[data-pane=guardrails]").text_content()
    for expected in ("pii-redaction", "prompt-injection", "email", "phone", "0.72", "Flagged"):
        assert expected in text, expected
    screenshot(page, "traces-tab-guardrails")
    panel.locator('.tabs button[data-tab="routing"]').click()
    text = panel.locator(".tabpane[data-pane=routing]").text_content()
    for expected in ("anthropic/claude-sonnet-4-6", "openai/gpt-4.1", "Yes", "x-smartflow-provider: anthropic",
                     "balanced"):
        assert expected in text, expected


def test_search_filters_and_sort(page, gateway, proxy_client, screenshot):
    capital = proxy(proxy_client, content="Name the capital of Peru")
    claude = proxy(proxy_client, "anthropic")
    plain = proxy(proxy_client)
    written(gateway, capital, claude, plain)
    hit = make_log(cache="hit", latency_ms=0.01, provider="openai")  # a cache hit: faster than any proxied call
    slow = make_log(cache="miss", latency_ms=9_000.0, provider="gemini", upstream_model="gemini-2.5-pro",
                    client_model="gemini-2.5-pro")
    VASLog.objects.bulk_create([hit, slow])
    open_page(page, gateway)
    assert len(row_ids(page)) == 5

    wanted = {"q": "", "provider": "", "cache": ""}

    def apply(**fields):
        wanted.update(fields)
        for name, value in fields.items():
            if name == "q":
                page.fill("#q", value)
            else:
                page.select_option(f"#{name}", value)  # a select change applies at once
        page.click("#toolbar button[type=submit]")
        expected = urlencode({k: v for k, v in wanted.items() if v})
        page.wait_for_function("q => window.smartflowTraces.state.shown === q && !window.smartflowTraces.state.loading",
                               arg=expected)

    apply(q="peru")  # prompt text
    assert row_ids(page) == [capital]
    apply(q=claude[:16])  # a request id prefix
    assert row_ids(page) == [claude]
    apply(q="claude-sonnet")  # a model
    assert row_ids(page) == [claude]
    screenshot(page, "traces-search")
    apply(q="", provider="anthropic")
    assert row_ids(page) == [claude]
    apply(provider="", cache="hit")
    assert row_ids(page) == [hit.id]
    apply(cache="")
    assert set(row_ids(page)) == {capital, claude, plain, hit.id, slow.id}
    assert "provider=" not in page.url and "cache=" not in page.url

    with page.expect_response(lambda r: "sort=-latency_ms" in r.url):
        page.click('th .sort[data-sort="latency_ms"]')
    page.wait_for_function("() => document.querySelector('th .sort[data-sort=latency_ms]').classList.contains('desc')")
    ids = row_ids(page)
    assert ids[0] == slow.id and ids[-1] == hit.id
    assert "sort=-latency_ms" in page.url
    screenshot(page, "traces-sorted-by-latency")
    with page.expect_response(lambda r: "sort=latency_ms" in r.url and "sort=-" not in r.url):
        page.click('th .sort[data-sort="latency_ms"]')
    page.wait_for_function("() => document.querySelector('th .sort[data-sort=latency_ms]').classList.contains('asc')")
    assert row_ids(page)[0] == hit.id

    # The server renders filters from the URL too (a shared link opens the same view).
    open_page(page, gateway, "?provider=gemini")
    assert row_ids(page) == [slow.id]
    assert page.locator("#provider").input_value() == "gemini"


def test_a_new_request_appears_without_a_reload(page, gateway, proxy_client, screenshot):
    first = proxy(proxy_client)
    written(gateway, first)
    open_page(page, gateway)
    page.wait_for_selector("#live.on")  # the WebSocket is up
    page.evaluate("window.__sameDocument = true")
    fresh = proxy(proxy_client, "anthropic")
    page.wait_for_selector(f'tr.row[data-id="{fresh}"]', timeout=10_000)
    assert row_ids(page)[:2] == [fresh, first]
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert page.locator("#total").text_content() == "2 requests"
    screenshot(page, "traces-live-row")


def test_paging_through_older_rows(page, gateway):
    made = [make_log() for _ in range(60)]
    VASLog.objects.bulk_create(made)
    open_page(page, gateway)
    assert len(row_ids(page)) == 50
    with page.expect_response(lambda r: "cursor=" in r.url):
        page.click("#older")
    page.wait_for_function("() => document.querySelectorAll('#rows tr.row').length === 10")
    assert row_ids(page) == [m.id for m in reversed(made[:10])]
    assert "Page 2" in page.locator("#page-info").text_content()
    with page.expect_response(lambda r: "/api/vas/logs" in r.url):
        page.click("#newer")
    page.wait_for_function("() => document.querySelectorAll('#rows tr.row').length === 50")
    assert row_ids(page)[0] == made[-1].id


def overview_of(page, log_id):
    page.click(f'tr.row[data-id="{log_id}"]')
    pane = page.locator("tr.detail .tabpane[data-pane=overview]")
    pane.wait_for()
    return pane


SEMANTIC_META = {"key": "9f2c4e1ab37d<img src=x onerror=window.__owned=1>", "age_s": 42, "ttl_s": 3600,
                 "similarity": 0.97123, "saved_usd": 0.0123}


def test_the_overview_shows_what_a_cache_hit_was_served_from(page, gateway, screenshot):
    """cache_meta as the detail API sends it (added to the answer at the fetch level, so this runs
    whether or not VASLog has the field yet); a trace without it shows no cache section."""
    hit, miss = make_log(cache="hit", cost_usd="0"), make_log(cache="miss")
    VASLog.objects.bulk_create([hit, miss])

    def with_meta(route):
        body = route.fetch().json()
        body["data"]["cache_meta"] = SEMANTIC_META
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route(f"**/api/vas/logs/{hit.id}", with_meta)
    open_page(page, gateway)
    text = overview_of(page, hit.id).locator(".cache-meta").text_content()
    for expected in ("9f2c4e1ab37d<img src=x onerror=window.__owned=1>", "42 s", "1 h 0 min", "0.9712",
                     "semantic match", "$0.0123"):
        assert expected in text, expected
    assert "semantic hit" in page.locator("tr.detail .tabpane[data-pane=overview]").text_content()
    assert page.locator("tr.detail .cache-meta img").count() == 0 and page.evaluate("window.__owned") is None
    screenshot(page, "traces-tab-overview-cache-hit")

    pane = overview_of(page, miss.id)
    assert pane.locator(".cache-meta").count() == 0 and "Entry key" not in pane.text_content()


def test_the_overview_shows_a_stored_cache_meta(page, gateway):
    """Goes live once VASLog has the cache_meta field (MetaCache, issue 10)."""
    if "cache_meta" not in {f.name for f in VASLog._meta.get_fields()}:
        pytest.skip("VASLog has no cache_meta field yet")
    log = make_log(cache="hit", cost_usd="0",
                   cache_meta={"key": "b7e1d2c3a4f5", "age_s": 3725, "ttl_s": 7200, "saved_usd": 0.5})
    log.save()
    open_page(page, gateway)
    pane = overview_of(page, log.id)
    text = pane.locator(".cache-meta").text_content()
    for expected in ("b7e1d2c3a4f5", "1 h 2 min", "2 h 0 min", "$0.50"):
        assert expected in text, expected
    assert "Similarity" not in text and "semantic hit" not in pane.text_content()  # an exact hit


def test_an_unpriced_request_shows_unpriced_not_zero(page, gateway):
    unpriced, free = make_log(cost_usd="0", unpriced=True, upstream_model="gpt-9-experimental"), \
        make_log(cost_usd="0", provider="ollama", upstream_model="llama3.3")
    VASLog.objects.bulk_create([unpriced, free])
    open_page(page, gateway)
    assert "unpriced" in page.locator(f'tr.row[data-id="{unpriced.id}"]').text_content()
    assert "unpriced" not in page.locator(f'tr.row[data-id="{free.id}"]').text_content() and "$0" in \
        page.locator(f'tr.row[data-id="{free.id}"]').text_content()
    assert "unpriced" in overview_of(page, unpriced.id).text_content()
