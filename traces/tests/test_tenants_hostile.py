"""A team member reads only their teams' traces: the list, a trace by id, the page and the live WebSocket."""
import json
import time

import httpx
import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient
from websockets.sync.client import connect

from conftest import MASTER_KEY
from sso.tests.conftest import configure, op, op_server, sso_clean, sign_in  # noqa: F401 (fixtures)
from traces import queries
from traces.models import FIELDS
from traces.recorder import recorder

from .conftest import make_log
from .test_live import ws_url


@pytest.fixture
def teams(db):
    from proxy.models import Team

    return {name: Team.objects.create(name=name) for name in ("research", "billing")}


@pytest.fixture
def member(teams):
    """A non-staff user in team research, stored as group sync stores it (Team.members)."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("bea", "bea@example.com", "unused-password")
    teams["research"].members.add(user)
    return user


@pytest.fixture
def traffic(logs):
    """Rows of research, billing and the master key (no team), interleaved in time."""
    made = {"research": [], "billing": [], "": []}
    for _ in range(3):
        for team in made:
            made[team] += logs(1, team=team, prompt=[{"role": "user", "content": f"secret of {team or 'master'}"}])
    return {team: [m.id for m in rows] for team, rows in made.items()}


def as_api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def ids(response):
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["data"]]


def newest_first(row_ids):
    return sorted(row_ids, reverse=True)  # make_log ids grow with time


def test_a_member_lists_only_their_teams_rows(member, traffic, staff_user, settings):
    body = as_api(member).get("/api/vas/logs").json()
    assert [row["id"] for row in body["data"]] == newest_first(traffic["research"])
    assert body["total"] == 3 and {row["team"] for row in body["data"]} == {"research"}
    everyone = newest_first(sum(traffic.values(), []))
    assert ids(as_api(staff_user).get("/api/vas/logs")) == everyone
    settings.SMARTFLOW_MASTER_KEY = MASTER_KEY
    master = APIClient()
    master.credentials(HTTP_AUTHORIZATION=f"Bearer {MASTER_KEY}")
    assert ids(master.get("/api/vas/logs")) == everyone


def test_a_member_of_two_teams_sees_both_and_a_member_of_none_nothing(member, teams, traffic):
    from django.contrib.auth import get_user_model

    teams["billing"].members.add(member)
    assert ids(as_api(member).get("/api/vas/logs")) == newest_first(traffic["research"] + traffic["billing"])
    loner = get_user_model().objects.create_user("lone", "lone@example.com", "unused-password")
    assert as_api(loner).get("/api/vas/logs").json() == {
        "success": True, "data": [], "total": 0, "total_exact": True, "next_cursor": None, "limit": 50, "offset": 0}


@pytest.mark.parametrize("q", ["secret", "secret of billing", "gpt-4.1", "{billing_id}", "{billing_prefix}"])
def test_search_stays_inside_the_members_teams(member, traffic, q):
    billing = traffic["billing"][0]
    q = q.format(billing_id=billing, billing_prefix=billing[:14])
    found = ids(as_api(member).get("/api/vas/logs", {"q": q}))
    assert set(found) <= set(traffic["research"])
    if q in ("secret", "gpt-4.1"):
        assert set(found) == set(traffic["research"])


def test_cursor_pages_and_filters_stay_inside_the_members_teams(member, traffic):
    api = as_api(member)
    seen, cursor = [], ""
    while True:
        body = api.get("/api/vas/logs", {"limit": 1, "cursor": cursor, "provider": "openai", "sort": "latency_ms"}).json()
        seen += [row["id"] for row in body["data"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(traffic["research"])


def test_a_big_team_list_does_not_reveal_the_table_size(member, logs, monkeypatch):
    monkeypatch.setattr(queries, "COUNT_CAP", 4)
    logs(6, team="research")
    logs(30, team="billing")
    body = as_api(member).get("/api/vas/logs", {"limit": 2}).json()
    assert (body["total"], body["total_exact"]) == (4, False)  # the cap, not an estimate of all 36 rows


def test_another_teams_trace_is_the_same_404_as_a_missing_one(member, traffic):
    api = as_api(member)
    own = api.get(f"/api/vas/logs/{traffic['research'][0]}")
    assert own.status_code == 200 and own.json()["data"]["prompt"][0]["content"] == "secret of research"
    missing = api.get("/api/vas/logs/ffffffffffff")
    assert missing.status_code == 404
    for other in (traffic["billing"][0], traffic[""][0]):
        refused = api.get(f"/api/vas/logs/{other}")
        assert refused.status_code == 404
        assert refused.json() == {"success": False, "error": f"No VAS log with id '{other}'."}
        assert refused.json()["error"].replace(other, "ffffffffffff") == missing.json()["error"]


def test_a_trace_not_yet_written_is_filtered_too(member, db):
    pending = [make_log(team="billing"), make_log(team="research")]
    records = [{name: getattr(log, name) for name in FIELDS} for log in pending]
    with recorder._lock:
        for record in records:
            recorder.pending.append(record, 0)
    try:
        api = as_api(member)
        assert api.get(f"/api/vas/logs/{pending[0].id}").status_code == 404
        r = api.get(f"/api/vas/logs/{pending[1].id}")
        assert r.status_code == 200 and r.json()["data"]["team"] == "research"
    finally:
        with recorder._lock:
            recorder.pending.clear()


def test_a_jwt_teams_claim_does_not_widen_access(member, teams, traffic):
    from sso import tokens

    token, _ = tokens.issue(member, ["research", "billing"])  # what the claim says is not the truth
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert ids(api.get("/api/vas/logs")) == newest_first(traffic["research"])
    teams["research"].members.remove(member)  # the database is: removed from the team, nothing is left
    assert ids(api.get("/api/vas/logs")) == []
    assert api.get(f"/api/vas/logs/{traffic['research'][0]}").status_code == 404


def test_a_members_list_costs_one_query_more_and_seeks_the_team_index(member, logs, django_assert_num_queries):
    logs(60, team="research")
    logs(60, team="billing")
    api = as_api(member)
    with django_assert_num_queries(3) as captured:  # the member's teams, the page, the capped count
        body = api.get("/api/vas/logs?limit=50").json()
    assert len(body["data"]) == 50 and body["total"] == 60
    page_sql = captured.captured_queries[1]["sql"]
    assert '"team" IN (\'research\')' in page_sql or "\"team\" = 'research'" in page_sql


def test_the_team_filter_uses_the_team_index_on_postgresql(member, logs):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the plan is PostgreSQL's")
    for _ in range(20):  # one team among many: the newest rows are mostly others'
        logs(10, team="research")
        for team in ("billing", "ops", "sales", "legal"):
            logs(25, team=team)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE traces_vaslog")
    qs = queries.base_queryset(queries.ListParams(), frozenset({"research"}))
    plan = qs.order_by("-timestamp", "-id").values(*queries.SUMMARY_FIELDS)[:51].explain()
    assert "vaslog_team_newest" in plan and "Sort" not in plan, plan


def test_the_page_shows_only_the_members_rows(member, traffic):
    client = Client()
    client.force_login(member)
    html = client.get("/dashboard/traces.html").content.decode()
    for row_id in traffic["research"]:
        assert row_id in html
    for row_id in traffic["billing"] + traffic[""]:
        assert row_id not in html
    assert "3 requests" in html
    searched = client.get("/dashboard/traces.html", {"q": "secret of billing"}).content.decode()
    assert not any(row_id in searched for row_id in traffic["billing"])


def session_of(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def test_the_live_socket_pushes_each_dashboard_only_its_teams_rows(gateway, teams, member, staff_user):
    from proxy.models import VirtualKey

    keys = {name: VirtualKey.issue(team)[1] for name, team in teams.items()}
    cookie = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session_of(member)}"}
    staff_cookie = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session_of(staff_user)}"}
    with connect(ws_url(gateway), additional_headers=cookie, open_timeout=10) as ws, \
            connect(ws_url(gateway), additional_headers=staff_cookie, open_timeout=10) as staff_ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        assert json.loads(staff_ws.recv(timeout=10))["type"] == "hello"
        sent = {}
        # Other teams' requests first: were they pushed to the member, they would arrive before research's.
        for team in ("billing", "", "research"):
            key = keys.get(team, MASTER_KEY)
            r = httpx.post(gateway.proxy_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "live"}]})
            assert r.status_code == 200, r.text
            sent[team] = r.headers["x-smartflow-request-id"]

        def rows_until(socket, wanted):
            rows = []
            while not wanted <= {row["id"] for row in rows}:
                message = json.loads(socket.recv(timeout=10))
                assert message["type"] == "rows" and message["rows"]
                rows += message["rows"]
            return rows

        staff_rows = rows_until(staff_ws, set(sent.values()))
        member_rows = rows_until(ws, {sent["research"]})
    assert {row["team"] for row in staff_rows} >= {"research", "billing", None}
    assert {row["id"] for row in member_rows} == {sent["research"]}
    assert {row["team"] for row in member_rows} == {"research"}


def test_an_sso_user_of_one_team_cannot_read_anothers_trace(configure, op, gateway, logs):  # noqa: F811
    from proxy.models import Team

    configure()
    op.current_user = "bob"  # the IdP puts bob in group research only
    Team.objects.create(name="billing")
    with httpx.Client(base_url=gateway.management_url, timeout=10) as browser:
        signed_in, _ = sign_in(browser)
        assert signed_in.json()["teams"] == ["research"]
        token = signed_in.json()["token"]
        own, other = logs(1, team="research")[0].id, logs(1, team="billing")[0].id
        with httpx.Client(base_url=gateway.management_url, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as jwt_api:
            for api in (browser, jwt_api):  # the session cookie, and the JWT
                assert [row["id"] for row in api.get("/api/vas/logs").json()["data"]] == [own]
                assert api.get(f"/api/vas/logs/{own}").status_code == 200
                refused = api.get(f"/api/vas/logs/{other}")
                assert refused.status_code == 404 and refused.json()["success"] is False
                assert api.get("/api/vas/logs", params={"q": other}).json()["data"] == []
        page = browser.get("/dashboard/traces.html")
        assert page.status_code == 200 and own in page.text and other not in page.text


@pytest.mark.parametrize("change", ["deactivated", "left the team", "demoted"])
def test_an_open_socket_follows_the_users_standing(gateway, settings, teams, member, staff_user, change):
    """The socket is the one surface not re-read per request: within SMARTFLOW_CONFIG_TTL it must
    stop pushing rows to a user who was deactivated, removed from the team or demoted from staff."""
    from websockets.exceptions import ConnectionClosed

    from proxy.models import VirtualKey

    settings.SMARTFLOW_CONFIG_TTL = 0.3
    key = VirtualKey.issue(teams["research"])[1]
    user = staff_user if change == "demoted" else member
    cookie = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session_of(user)}"}

    def send(content):
        r = httpx.post(gateway.proxy_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "gpt-4.1", "messages": [{"role": "user", "content": content}]})
        assert r.status_code == 200, r.text
        return r.headers["x-smartflow-request-id"]

    with connect(ws_url(gateway), additional_headers=cookie, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        before = send("before")
        assert before in ws.recv(timeout=10)
        if change == "deactivated":
            user.is_active = False
            user.save()
        elif change == "left the team":
            teams["research"].members.remove(user)
        else:
            user.is_staff = False
            user.save()
        time.sleep(0.4)
        after = send("after")
        try:
            while True:
                assert after not in ws.recv(timeout=2)
        except TimeoutError:
            assert change != "deactivated", "a deactivated user's socket stays open"
        except ConnectionClosed as closed:
            assert closed.rcvd.code == 4401
