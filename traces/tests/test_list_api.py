"""GET /api/vas/logs and /api/vas/logs/{id}: contract bodies, filters, sorting, keyset pages."""
from datetime import datetime, timezone

import pytest
from rest_framework.test import APIClient

from conftest import MASTER_KEY
from traces import queries
from traces.queries import ListParams, filter_logs


@pytest.fixture
def api(settings):
    settings.SMARTFLOW_MASTER_KEY = MASTER_KEY
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {MASTER_KEY}")
    return client


def ids(body):
    return [row["id"] for row in body["data"]]


def test_it_lists_summaries_newest_first_in_the_contract_shape(api, logs):
    made = logs(3)
    r = api.get("/api/vas/logs")
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and body["total"] == 3
    assert ids(body) == [m.id for m in reversed(made)]
    row = body["data"][0]
    for name in ("id", "timestamp", "key", "team", "client_model", "provider", "upstream_model", "status_code",
                 "stream", "latency_ms", "tokens_input", "tokens_output", "cost_usd", "cache", "compliance"):
        assert name in row
    assert "prompt" not in row and "response" not in row  # the list stays narrow
    assert row["cost_usd"] == pytest.approx(0.00006)


def test_it_answers_a_single_log_and_404s_in_the_contract_shape(api, logs):
    made = logs(1, guardrails={"policies": ["pii"], "pii": ["email"], "risk_score": 0.4})
    r = api.get(f"/api/vas/logs/{made[0].id}")
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["id"] == made[0].id and data["guardrails"]["pii"] == ["email"]
    assert data["prompt"][0]["role"] == "user"
    r = api.get("/api/vas/logs/nope")
    assert r.status_code == 404
    assert r.json()["success"] is False and "nope" in r.json()["error"]


def test_it_requires_management_auth(db, logs):
    logs(1)
    assert APIClient().get("/api/vas/logs").status_code in (401, 403)
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer sk-sf-not-a-key")
    assert bad.get("/api/vas/logs").status_code in (401, 403)


def test_it_accepts_a_signed_in_session(client, staff_user, logs):
    logs(2)
    client.force_login(staff_user)
    r = client.get("/api/vas/logs")
    assert r.status_code == 200 and r.json()["total"] == 2


def test_it_filters_by_provider_cache_and_compliance(api, logs):
    logs(2, provider="openai", cache="hit")
    logs(3, provider="anthropic", client_model="claude-sonnet-4-6", upstream_model="claude-sonnet-4-6", cache="miss")
    assert api.get("/api/vas/logs?provider=anthropic").json()["total"] == 3
    assert api.get("/api/vas/logs?cache=hit").json()["total"] == 2
    body = api.get("/api/vas/logs?provider=openai&cache=miss").json()
    assert body["total"] == 0 and body["data"] == []
    logs(1, compliance="blocked")
    assert [r["compliance"] for r in api.get("/api/vas/logs?compliance=blocked").json()["data"]] == ["blocked"]
    assert api.get("/api/vas/logs?compliance=flagged").json()["total"] == 0
    assert api.get("/api/vas/logs?compliance=nope").status_code == 400


def test_it_searches_request_id_model_and_prompt_text(api, logs):
    a = logs(1, prompt=[{"role": "user", "content": "Summarise the quarterly report"}])[0]
    b = logs(1, client_model="claude-haiku-4-5", upstream_model="claude-haiku-4-5", provider="anthropic")[0]
    logs(3)
    assert ids(api.get(f"/api/vas/logs?q={a.id}").json()) == [a.id]
    assert ids(api.get(f"/api/vas/logs?q={b.id[:20]}").json()) == [b.id]  # an id prefix
    assert ids(api.get("/api/vas/logs?q=haiku").json()) == [b.id]
    assert ids(api.get("/api/vas/logs?q=QUARTERLY").json()) == [a.id]  # case-insensitive prompt text


@pytest.mark.parametrize("sort,key,reverse", [
    ("latency_ms", lambda r: (r["latency_ms"], r["id"]), False),
    ("-latency_ms", lambda r: (r["latency_ms"], r["id"]), True),
    ("-tokens", lambda r: (r["tokens_input"] + r["tokens_output"], r["id"]), True),
    ("timestamp", lambda r: (r["timestamp"], r["id"]), False),
    ("-cost_usd", lambda r: (r["cost_usd"], r["id"]), True),
])
def test_it_sorts_on_the_columns_the_page_offers(api, logs, sort, key, reverse):
    for i in range(6):
        logs(1, latency_ms=[30, 10, 50, 20, 60, 40][i], tokens_output=[1, 9, 3, 7, 5, 2][i],
             cost_usd=["0.1", "0.5", "0.2", "0.4", "0.3", "0.6"][i])
    data = api.get(f"/api/vas/logs?sort={sort}").json()["data"]
    assert data == sorted(data, key=key, reverse=reverse)


def test_it_pages_with_a_keyset_cursor_without_gaps_or_repeats(api, logs):
    # Several logs share a timestamp: the id breaks ties.
    same = datetime(2026, 11, 2, tzinfo=timezone.utc)
    made = logs(7) + logs(4, timestamp=same) + logs(6)
    seen, cursor = [], ""
    for _ in range(10):
        body = api.get(f"/api/vas/logs?limit=4&cursor={cursor}").json()
        seen += ids(body)
        cursor = body["next_cursor"]
        if not cursor:
            break
    expected = sorted(made, key=lambda m: (m.timestamp, m.id), reverse=True)
    assert seen == [m.id for m in expected]


def test_it_pages_with_offset_too(api, logs):
    made = logs(5)
    body = api.get("/api/vas/logs?limit=2&offset=2").json()
    assert ids(body) == [made[2].id, made[1].id] and body["total"] == 5


@pytest.mark.parametrize("query", ["limit=0", "limit=1000", "offset=-1", "limit=x", "provider=acme",
                                   "cache=warm", "sort=prompt", "cursor=garbage"])
def test_it_refuses_bad_parameters_with_a_clear_error(api, logs, query):
    logs(1)
    r = api.get(f"/api/vas/logs?{query}")
    assert r.status_code == 400
    assert r.json()["success"] is False and r.json()["error"]


def test_it_caps_the_count_instead_of_counting_the_whole_table(api, logs, monkeypatch):
    monkeypatch.setattr(queries, "COUNT_CAP", 5)
    logs(8)
    body = api.get("/api/vas/logs?limit=2&provider=openai").json()
    assert body["total"] == 5 and body["total_exact"] is False
    body = api.get("/api/vas/logs?limit=2").json()  # unfiltered: the table estimate
    assert body["total"] >= 5 and body["total_exact"] is False
    assert api.get("/api/vas/logs?limit=50").json() | {"data": None} == {
        "success": True, "data": None, "total": 8, "total_exact": True, "next_cursor": None, "limit": 50, "offset": 0}


def test_the_list_costs_two_queries_whatever_the_page_size(api, logs, django_assert_num_queries):
    logs(120)
    with django_assert_num_queries(2):  # the page, and the capped count
        r = api.get("/api/vas/logs?limit=100&provider=openai&cache=miss&q=gpt")
    assert len(r.json()["data"]) == 100
    with django_assert_num_queries(1):  # everything fits on the page: no count
        assert api.get("/api/vas/logs?limit=200").json()["total"] == 120


def test_filter_logs_is_shared_and_takes_plain_dicts(logs):
    made = logs(3)
    page = filter_logs({"limit": "2"})
    assert [r["id"] for r in page.rows] == [made[2].id, made[1].id]
    assert page.next_cursor and filter_logs(ListParams(limit=2, cursor=page.next_cursor)).rows[0]["id"] == made[0].id
