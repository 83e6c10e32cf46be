"""Which policy governs a request and which target serves it, across real wires: weighted splits
within statistical bounds, sticky arms, cheapest by this request's tokens, the header precedence,
team and model scoping, policies changed while traffic flows, and one cache entry for all arms."""
import threading
import time
import uuid

import anthropic
import httpx
import pytest

from conftest import MASTER_KEY, wait_for
from proxy.routing_policies import spec

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}
SPLIT = [{"provider": "openai", "model": "gpt-4.1", "weight": 3}, {"provider": "gemini", "model": "gemini-2.5-flash",
                                                                   "weight": 1}]


def post(client, body=CHAT, **headers):
    return client.post("/v1/chat/completions", json=body, headers=headers)


def served(r):
    assert r.status_code == 200, r.text
    return r.headers["x-smartflow-provider"]


def log_of(gateway, r):
    return gateway.log(r.headers["x-smartflow-request-id"])


# --- weighted ---------------------------------------------------------------------------


def test_a_weighted_split_holds_over_many_requests(routing_policy, proxy_client, gateway):
    routing_policy("ab", "weighted", SPLIT)
    n = 300
    counts = {"openai": 0, "gemini": 0}
    for _ in range(n):
        counts[served(post(proxy_client))] += 1
    # Binomial(300, 0.75): mean 225, standard deviation 7.5; 4 of them either side.
    assert abs(counts["openai"] - 225) <= 30, counts
    r = post(proxy_client)
    log = log_of(gateway, r)
    assert log.routing["strategy"] == "weighted" and log.routing["arm"] == f"{served(r)}/{log.upstream_model}"


def test_a_zero_weight_target_only_serves_as_failover(routing_policy, proxy_client, fake_upstream):
    routing_policy("ab", "weighted", [{**SPLIT[0], "weight": 0}, SPLIT[1]], retry={"attempts": 0})
    assert {served(post(proxy_client)) for _ in range(20)} == {"gemini"}
    fake_upstream.script("gemini", status=503)
    assert served(post(proxy_client)) == "openai"


def test_a_sticky_caller_keeps_its_arm(routing_policy, proxy_client, gateway):
    routing_policy("ab", "weighted", [{**SPLIT[0], "weight": 1}, {**SPLIT[1], "weight": 1}], sticky="user")
    for user in ("alice", "bob", "carol"):
        arms = {served(post(proxy_client, {**CHAT, "user": user})) for _ in range(10)}
        assert len(arms) == 1, (user, arms)
    arms = {served(post(proxy_client, {**CHAT, "user": f"user-{i}"})) for i in range(40)}
    assert arms == {"openai", "gemini"}  # callers spread over both arms (2 ** -39 chance otherwise)


def test_the_ab_key_header_and_anthropic_user_id_make_a_caller_sticky(routing_policy, proxy_client, gateway,
                                                                       master_key):
    routing_policy("ab", "weighted", [{**SPLIT[0], "weight": 1}, {**SPLIT[1], "weight": 1}], sticky="user")
    policy = spec.snapshot.get_sync().by_name["ab"]
    arm_of = {key: ["openai", "gemini"][spec.draw([1, 1], spec.point_for(policy, key))]
              for key in (f"k{i}" for i in range(20))}
    for key, arm in arm_of.items():
        assert served(post(proxy_client, {**CHAT, "user": "ignored"}, **{"x-smartflow-ab-key": key})) == arm
    claude = anthropic.Anthropic(base_url=gateway.proxy_url, api_key=master_key, max_retries=0)
    for key, arm in list(arm_of.items())[:6]:
        raw = claude.messages.with_raw_response.create(model="gpt-4.1", max_tokens=20, metadata={"user_id": key},
                                                       messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-smartflow-provider"] == arm


def test_other_strategies_ignore_sticky(routing_policy, proxy_client):
    routing_policy("f", "failover", SPLIT, sticky="user")
    assert {served(post(proxy_client, {**CHAT, "user": f"u{i}"})) for i in range(10)} == {"openai"}


# --- cheapest ---------------------------------------------------------------------------


@pytest.fixture
def priced_models(gateway):
    from proxy import prices
    from proxy.models import ModelPrice

    ModelPrice.objects.create(model="gpt-cheap-in", provider="openai", input_usd_per_mtok=1, output_usd_per_mtok=20)
    ModelPrice.objects.create(model="gemini-cheap-out", provider="gemini", input_usd_per_mtok=5,
                              output_usd_per_mtok=2)
    prices.table.invalidate()
    prices.table.get_sync()
    yield
    ModelPrice.objects.all().delete()
    prices.table.invalidate()
    prices.table.get_sync()


def test_cheapest_orders_by_the_price_of_this_requests_tokens(routing_policy, proxy_client, gateway, priced_models):
    routing_policy("cheap", "cheapest", [{"provider": "openai", "model": "gpt-cheap-in"},
                                         {"provider": "gemini", "model": "gemini-cheap-out"}])
    long_prompt = {**CHAT, "messages": [{"role": "user", "content": "x" * 8000}], "max_tokens": 10}
    short_prompt = {**CHAT, "max_tokens": 2000}
    assert served(post(proxy_client, long_prompt)) == "openai"  # input-heavy: cheap input wins
    assert served(post(proxy_client, short_prompt)) == "gemini"  # output-heavy: cheap output wins
    assert log_of(gateway, post(proxy_client, short_prompt)).routing["strategy"] == "cheapest"


def test_cheapest_fails_over_in_price_order(routing_policy, proxy_client, gateway, fake_upstream):
    routing_policy("cheap", "cheapest", [{"provider": "anthropic", "model": "claude-sonnet-4-6"},
                                         {"provider": "openai", "model": "gpt-4.1"},
                                         {"provider": "gemini", "model": "gemini-2.5-flash"}], retry={"attempts": 0})
    fake_upstream.script("gemini", status=503)
    r = post(proxy_client)
    assert served(r) == "openai"
    assert [hop["provider"] for hop in log_of(gateway, r).routing["chain"]] == ["gemini", "openai"]


def test_the_price_function_uses_the_price_table(db):
    assert spec.price_usd("openai", "gpt-4.1", 1_000_000, 0) == pytest.approx(2.0)  # proxy/prices.json
    assert spec.price_usd("openai", "gpt-4.1", 0, 1_000_000) == pytest.approx(8.0)
    assert spec.price_usd("anthropic", "gpt-4.1", 1, 1) == float("inf")  # priced per provider
    assert spec.price_usd("openai", "no-such-model", 1, 1) == float("inf")


# --- which policy ------------------------------------------------------------------------


def test_the_provider_header_pins_and_no_policy_applies(routing_policy, proxy_client, gateway, fake_upstream):
    routing_policy("f", "failover", SPLIT)
    fake_upstream.script("gemini", status=503)
    r = post(proxy_client, **{"x-smartflow-provider": "gemini", "x-smartflow-policy": "f"})
    assert r.status_code == 502 and len(fake_upstream.requests) == 1  # pinned: no retry, no failover
    log = log_of(gateway, r)
    assert log.routing["policy"] is None and log.routing["override"] == "gemini"
    assert [hop["status"] for hop in log.routing["chain"]] == [503]


@pytest.mark.parametrize("endpoint,body", [("/v1/chat/completions", CHAT),
                                           ("/v1/messages", {**CHAT, "max_tokens": 10})])
def test_an_unknown_policy_header_is_a_400_before_any_provider_call(gateway, proxy_client, fake_upstream,
                                                                    routing_policy, endpoint, body):
    routing_policy("f", "failover", SPLIT, enabled=False)
    for name in ("nope", "f"):  # unknown, and disabled
        r = proxy_client.post(endpoint, json=body, headers={"x-smartflow-policy": name})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        if endpoint == "/v1/messages":
            assert error["type"] == "invalid_request_error"
        else:
            assert error["code"] == "unknown_policy" and error["param"] == "x-smartflow-policy"
        assert log_of(gateway, r).status_code == 400
    assert fake_upstream.requests == []


def test_the_policy_header_applies_whatever_the_policys_models(routing_policy, proxy_client, gateway):
    routing_policy("gem", "failover", SPLIT[1:], models=["some-other-model"])
    assert served(post(proxy_client)) == "openai"  # models do not match: no policy
    r = post(proxy_client, **{"x-smartflow-policy": "gem"})
    assert served(r) == "gemini" and log_of(gateway, r).routing["policy"] == "gem"


def test_the_lowest_priority_then_the_name_wins(routing_policy, proxy_client, gateway):
    routing_policy("b-gemini", "failover", SPLIT[1:], priority=10)
    routing_policy("a-anthropic", "failover", [{"provider": "anthropic", "model": "claude-sonnet-4-6"}], priority=10)
    routing_policy("z-first", "failover", SPLIT[:1], priority=20)
    assert log_of(gateway, post(proxy_client)).routing["policy"] == "a-anthropic"


def test_a_policy_scoped_to_teams_and_models(routing_policy, gateway, team, virtual_key, proxy_client):
    routing_policy("research-only", "failover", SPLIT[1:], teams=["research"], models=["gpt-4.1"])
    with httpx.Client(base_url=gateway.proxy_url, headers={"Authorization": f"Bearer {virtual_key}"}) as member:
        assert served(post(member)) == "gemini"
        assert served(post(member, {**CHAT, "model": "gpt-4.1-mini"})) == "openai"  # another model
    assert served(post(proxy_client)) == "openai"  # the master key is in no team


def test_another_teams_policy_cannot_be_named(routing_policy, gateway, team, proxy_client):
    from proxy.models import Team, VirtualKey

    routing_policy("research-only", "failover", SPLIT[1:], teams=["research"])
    outsider = VirtualKey.issue(Team.objects.create(name="sales"))[1]
    with httpx.Client(base_url=gateway.proxy_url, headers={"Authorization": f"Bearer {outsider}"}) as client:
        r = post(client, **{"x-smartflow-policy": "research-only"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_policy"
        assert served(post(client)) == "openai"


def test_a_target_the_team_may_not_use_is_skipped(routing_policy, gateway, fake_upstream):
    from proxy.models import Team, VirtualKey

    key = VirtualKey.issue(Team.objects.create(name="narrow", allowed_models=["gemini-2.5-flash"]))[1]
    routing_policy("f", "failover", SPLIT)
    with httpx.Client(base_url=gateway.proxy_url, headers={"Authorization": f"Bearer {key}"}) as client:
        r = post(client, {**CHAT, "model": "gemini-2.5-flash"})
        assert served(r) == "gemini" and [q.provider for q in fake_upstream.requests] == ["gemini"]
        assert "not allowed" in log_of(gateway, r).routing["reason"]
        routing_policy("f", "failover", SPLIT[:1])
        r = post(client, {**CHAT, "model": "gemini-2.5-flash"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"


# --- changes while traffic flows -----------------------------------------------------------


def test_a_policy_changed_while_traffic_flows(routing_policy, gateway, settings):
    settings.SMARTFLOW_CONFIG_TTL = 0.2
    routing_policy("live", "failover", SPLIT[:1])
    from proxy.models import RoutingPolicy

    seen, failures, stop = [], [], threading.Event()

    def traffic():
        with httpx.Client(base_url=gateway.proxy_url, headers={"Authorization": f"Bearer {MASTER_KEY}"}) as client:
            while not stop.is_set():
                r = post(client)
                (seen if r.status_code == 200 else failures).append((time.monotonic(), r.headers.get(
                    "x-smartflow-provider"), r.status_code))

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for worker in workers:
        worker.start()
    # Waits on answers, not on the clock: a busy machine may serve few requests in a second.
    wait_for(lambda: len(seen) >= 3, timeout=20)
    # Written straight to the database, as another process would: no invalidation here.
    RoutingPolicy.objects.filter(name="live").update(targets=SPLIT[1:])
    changed = time.monotonic()
    wait_for(lambda: len([t for t, _, _ in seen if t > changed + 0.5]) >= 3, timeout=20)
    RoutingPolicy.objects.filter(name="live").delete()
    deleted = time.monotonic()
    wait_for(lambda: len([t for t, _, _ in seen if t > deleted + 0.5]) >= 3, timeout=20)
    stop.set()
    for worker in workers:
        worker.join()
    assert failures == []
    before = {p for t, p, _ in seen if t < changed}
    between = [p for t, p, _ in seen if changed + 0.5 < t < deleted]
    after = [p for t, p, _ in seen if t > deleted + 0.5]
    assert before == {"openai"} and between and set(between) == {"gemini"} and after and set(after) == {"openai"}


# --- the cache ----------------------------------------------------------------------------


def test_one_cache_entry_answers_for_every_arm(routing_policy, proxy_client, gateway, settings):
    from proxy.cache import store

    settings.SMARTFLOW_CACHE = "exact"
    store.current().clear()
    routing_policy("ab", "weighted", [{**SPLIT[0], "weight": 1}, {**SPLIT[1], "weight": 1}], sticky="user")
    policy = spec.snapshot.get_sync().by_name["ab"]
    users = {}
    for i in range(50):
        users.setdefault(spec.draw([1, 1], spec.point_for(policy, f"u{i}")), f"u{i}")
    body = {**CHAT, "messages": [{"role": "user", "content": f"q {uuid.uuid4().hex}"}]}
    first = post(proxy_client, {**body, "user": users[0]})
    second = post(proxy_client, {**body, "user": users[1]})
    assert served(first) == "openai" and first.headers["x-smartflow-cache"] == "MISS"
    assert second.headers["x-smartflow-cache"] == "HIT" and second.json()["choices"] == first.json()["choices"]
    hit = log_of(gateway, second)
    assert hit.cache == "hit" and hit.routing["chain"] == [] and second.headers["x-smartflow-attempts"] == "0"
    store.current().clear()
