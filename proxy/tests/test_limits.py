"""Budgets and rate limits across the real wire: the gateway served for real, the fake provider, the SDKs.

With REDIS_URL set the gateway's counters are in Redis; without, in process: the same tests run on both.
"""
import asyncio
import os
import signal
import time
import uuid
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from conftest import wait_for
from proxy import limits
from proxy.auth import forget_keys
from proxy.limits import counters as store
from proxy.models import Team, VirtualKey
from tests.fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS
from traces.models import VASLog

REDIS = os.environ.get("REDIS_URL")
# The middle of a minute, so a window never rolls over during a test unless the test moves the clock.
MID_MINUTE = 1_800_000_030.0  # 2027-01-15T08:00:30Z


@pytest.fixture
def clock(monkeypatch):
    """The limits' clock, fixed in the middle of a fresh minute (tests move it with .now)."""
    class Clock:
        now = MID_MINUTE + 60 * (uuid.uuid4().int % 10**6)  # a minute no other test used

        def __call__(self):
            return self.now
    c = Clock()
    monkeypatch.setattr(limits, "clock", c)
    return c


@pytest.fixture
def limited(gateway, clock, settings):
    """make(team limits..., key=dict(key limits)) -> a raw key of a fresh team."""
    settings.SMARTFLOW_LIMITS = True
    shared = store.current()
    if getattr(shared, "down_until", 0) > time.monotonic():  # each test starts on a Redis that answers
        import warnings  # shown in the run's summary: the failure belongs to an earlier test

        warnings.warn(f"limits: Redis was backing off after an earlier failure ({shared.last_error}: {shared.failure})")
        shared.down_until = 0

    def make(key=None, **team_limits):
        team = Team.objects.create(name=f"lim-{uuid.uuid4().hex[:8]}", **team_limits)
        forget_keys()
        return VirtualKey.issue(team, name="limited", **(key or {}))[1], team
    yield make
    store.local.values.clear()


def chat(text="hi", **extra):
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": text}], **extra}


def post(gateway, raw, body, **headers):
    return httpx.post(gateway.proxy_url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {raw}", **headers})


def counter(key: str) -> tuple[int, int]:
    """(used, held) of a counter, wherever the gateway keeps them."""
    if REDIS:
        return own_counter(REDIS, key)
    slot = store.local.values.get(key, [0, 0])
    return slot[0], slot[1]


def own_counter(url: str, key: str) -> tuple[int, int]:
    """(used, held) of a counter in the Redis at url (held: 'held' and the holds' time buckets b:*)."""
    import redis

    fields = redis.Redis.from_url(url).hgetall(key)
    return int(fields.get(b"used", 0)), sum(int(v) for k, v in fields.items() if k == b"held" or k[:2] == b"b:")


def window_key(scope: str, kind: str, now: float) -> str:
    return f"{limits.key_prefix()}:{scope}:{kind}:{int(now // 60)}"


def settled(key: str, used=None):
    """Waits for the log phase's settlement (a task after the answer): nothing held any more."""
    return wait_for(lambda: (lambda c: c if c[1] == 0 and (used is None or c[0] == used) else None)(counter(key)))


def logs(gateway, count, team=None):
    """The VASLogs (of team's requests only, when given: a trace of an earlier test written late is
    not one) once there are count."""
    def written():
        gateway.flush_traces()
        found = VASLog.objects.order_by("timestamp")
        found = list(found.filter(team=team.name) if team is not None else found)
        return found if len(found) >= count else None
    return wait_for(written, timeout=15)


def test_exactly_the_limit_of_200_parallel_requests_is_served(limited, gateway, fake_upstream):
    raw, team = limited(rpm_limit=50)

    async def main():
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
            return await asyncio.gather(*(client.post(gateway.proxy_url + "/v1/chat/completions", json=chat(),
                                                      headers={"Authorization": f"Bearer {raw}"})
                                          for _ in range(200)))
    answers = asyncio.run(main())
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(200) == 50 and statuses.count(429) == 150
    assert len(fake_upstream.requests) == 50  # a refusal never reaches the provider
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-limit-requests"] == "50"
    assert int(refused.headers["retry-after"]) == 30  # the rest of the minute
    assert sorted(log.status_code for log in logs(gateway, 200)) == statuses  # one VASLog each


def test_headers_on_every_answer_streams_included_before_the_first_event(limited, gateway, fake_upstream):
    raw, _ = limited(rpm_limit=10, tpm_limit=100_000)
    first = post(gateway, raw, chat(max_tokens=100))
    assert first.status_code == 200
    assert (first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]) == ("10", "9")
    estimate = 100_000 - int(first.headers["x-ratelimit-remaining-tokens"]) - 100
    assert first.headers["x-ratelimit-limit-tokens"] == "100000" and 0 < estimate < 20  # "hi" + framing
    with httpx.stream("POST", gateway.proxy_url + "/v1/chat/completions", json=chat(stream=True), timeout=30,
                      headers={"Authorization": f"Bearer {raw}"}) as streamed:
        # With the status line, before any event was read.
        assert streamed.headers["x-ratelimit-remaining-requests"] == "8"
        assert "x-ratelimit-remaining-tokens" in streamed.headers
        assert b"data: [DONE]" in streamed.read()
    unlimited = post(gateway, limited()[0], chat())
    assert not any(h.startswith("x-ratelimit") for h in unlimited.headers)
    assert len(logs(gateway, 3)) == 3  # the stream's trace too, before the next test reads the traces


def test_refusals_in_both_formats_through_the_sdks(limited, gateway, fake_upstream):
    raw, team = limited(rpm_limit=1)
    sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=raw, max_retries=0)
    claude = anthropic.Anthropic(base_url=gateway.proxy_url, api_key=raw, max_retries=0)
    sdk.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert refused.value.code == "rate_limit_exceeded" and refused.value.status_code == 429
    assert refused.value.response.headers["retry-after"] == "30"
    assert f"team '{team.name}'" in refused.value.message and "1 requests per minute" in refused.value.message
    with pytest.raises(anthropic.RateLimitError) as refused:
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    body = refused.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert refused.value.response.headers["retry-after"] == "30"
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake_upstream.requests) == 1
    assert [log.status_code for log in logs(gateway, 3)] == [200, 429, 429]


def test_a_long_tool_description_or_system_prompt_counts_against_tpm_in_both_formats(limited, gateway, fake_upstream):
    raw, _ = limited(tpm_limit=1000)
    long = "Look the weather up for a city, with care. " * 2000  # about 20k tokens
    claude = anthropic.Anthropic(base_url=gateway.proxy_url, api_key=raw, max_retries=0)
    sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=raw, max_retries=0)
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.RateLimitError):  # native pass-through: the body goes to Anthropic as it is
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=hi, tools=[
            {"name": "weather", "description": long, "input_schema": {"type": "object", "properties": {}}}])
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=hi, system=long)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="gpt-4.1", max_tokens=20, messages=hi, tools=[
            {"type": "function", "function": {"name": "weather", "description": long, "parameters": {}}}])
    assert not fake_upstream.requests
    claude.messages.create(model="claude-sonnet-4-6", max_tokens=20, messages=hi, system="Be brief.")
    assert len(fake_upstream.requests) == 1
    _, team = limited(tpm_limit=10_000)
    raw = VirtualKey.issue(team, name="n")[1]
    r = post(gateway, raw, chat(max_tokens=100, n=20))  # n completions, each up to max_tokens, are held
    assert 10_000 - int(r.headers["x-ratelimit-remaining-tokens"]) >= 2000
    assert [log.status_code for log in logs(gateway, 5)] == [429, 429, 429, 200, 200]


def test_the_openai_sdk_retry_honours_retry_after(limited, gateway, clock, fake_upstream):
    raw, _ = limited(rpm_limit=1)
    clock.now = (clock.now // 60) * 60 + 59.2  # the window rolls over in 0.8 s
    started = time.monotonic()
    real = time.time()
    clock.__class__.__call__ = lambda self: self.now + (time.time() - real)  # the clock runs from here
    sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=raw, max_retries=3)
    sdk.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    raw_answer = sdk.chat.completions.with_raw_response.create(model="gpt-4.1",
                                                               messages=[{"role": "user", "content": "hi"}])
    assert raw_answer.http_response.status_code == 200 and raw_answer.retries_taken == 1
    assert time.monotonic() - started >= 0.7  # it waited Retry-After (1 s), not its own 0.5 s back-off
    assert [log.status_code for log in logs(gateway, 3)] == [200, 429, 200]  # and did not hammer


def test_a_budget_refusal_tells_the_sdk_not_to_retry(limited, gateway, fake_upstream):
    raw, _ = limited(budget_cap_usd=Decimal("0"), budget_period="total")
    sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=raw, max_retries=3)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "budget_exceeded"
    assert "retry-after" not in refused.value.response.headers  # a total budget does not renew
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert [log.status_code for log in logs(gateway, 1)] == [429] and not fake_upstream.requests


def test_tokens_are_reserved_then_settled_to_the_providers_usage(limited, gateway, clock, fake_upstream):
    raw, team = limited(tpm_limit=10_000)
    key = window_key(f"t{team.pk}", "t", clock.now)
    r = post(gateway, raw, chat(max_tokens=500))
    reserved = 10_000 - int(r.headers["x-ratelimit-remaining-tokens"])
    assert 500 < reserved < 520
    assert settled(key) == (PROMPT_TOKENS + COMPLETION_TOKENS, 0)
    with httpx.stream("POST", gateway.proxy_url + "/v1/chat/completions", timeout=30,
                      json=chat(stream=True, max_tokens=300), headers={"Authorization": f"Bearer {raw}"}) as s:
        assert int(s.headers["x-ratelimit-remaining-tokens"]) == 10_000 - 15 - (reserved - 500 + 300)
        s.read()
    assert settled(key, 2 * (PROMPT_TOKENS + COMPLETION_TOKENS)) == (30, 0)


def test_a_prompt_over_what_is_left_or_over_the_whole_limit_is_refused_at_once(limited, gateway, clock,
                                                                              fake_upstream):
    raw, team = limited(tpm_limit=200)
    long = " ".join(["word"] * 300)
    r = post(gateway, raw, chat(long))
    assert r.status_code == 429 and "retry-after" not in r.headers and "larger than the whole" in r.text
    assert r.headers["x-should-retry"] == "false"
    assert post(gateway, raw, chat(" ".join(["word"] * 150), max_tokens=10)).status_code == 200
    settled(window_key(f"t{team.pk}", "t", clock.now))  # 15 used
    r = post(gateway, raw, chat(" ".join(["word"] * 190)))  # 15 + ~197 > 200
    assert r.status_code == 429 and r.headers["retry-after"] == "30" and "tokens per minute" in r.text
    assert len(fake_upstream.requests) == 1
    clock.now += 60  # the next minute
    assert post(gateway, raw, chat(" ".join(["word"] * 190), max_tokens=1)).status_code == 200


def test_the_key_limit_and_the_team_limit_both_hold_and_the_tighter_decides(limited, gateway, fake_upstream):
    raw, team = limited(rpm_limit=3, key={"rpm_limit": 2})
    other = VirtualKey.issue(team, name="other")[1]
    first = post(gateway, raw, chat())
    assert first.headers["x-ratelimit-limit-requests"] == "2"  # the key's: tighter than the team's 3
    assert post(gateway, raw, chat()).status_code == 200
    r = post(gateway, raw, chat())
    assert r.status_code == 429 and "key sk-sf-" in r.json()["error"]["message"]
    assert post(gateway, other, chat()).status_code == 200  # the team's third
    r = post(gateway, other, chat())
    assert r.status_code == 429 and f"team '{team.name}'" in r.json()["error"]["message"]


def test_budget_reserves_settles_refuses_at_the_cap_and_rolls_over(limited, gateway, clock, fake_upstream,
                                                                    management_client):
    # gpt-4.1: $2 / $8 per million; the fake's usage (10 in, 5 out) costs $0.00006 a request.
    raw, team = limited(budget_cap_usd=Decimal("0.0001"), budget_period="daily")
    clock.now = (clock.now // 86400) * 86400 + 86400 - 100  # 100 s before midnight UTC
    spend = limits.spend_key(f"t{team.pk}", limits.period_of("daily", clock.now)[0])
    assert post(gateway, raw, chat(max_tokens=5)).status_code == 200
    assert settled(spend) == (60_000, 0)
    assert post(gateway, raw, chat(max_tokens=5)).status_code == 200  # under the cap: served
    assert settled(spend) == (120_000, 0)
    r = post(gateway, raw, chat(max_tokens=5))
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    assert r.headers["retry-after"] == "100" and r.headers["x-should-retry"] == "false"
    listed = {t["name"]: t for t in management_client.get("/api/teams").json()["data"]}[team.name]
    assert listed["spent_usd"] == pytest.approx(0.00012) and listed["budget_period"] == "daily"
    team.refresh_from_db()
    assert team.spent_usd == Decimal("0.00012")  # the stored copy followed, off the request path
    clock.now += 100  # midnight: a new period, no restart
    listed = {t["name"]: t for t in management_client.get("/api/teams").json()["data"]}[team.name]
    assert listed["spent_usd"] == 0
    assert post(gateway, raw, chat(max_tokens=5)).status_code == 200
    settled(limits.spend_key(f"t{team.pk}", limits.period_of("daily", clock.now)[0]), 60_000)
    listed = {t["name"]: t for t in management_client.get("/api/teams").json()["data"]}[team.name]
    assert listed["spent_usd"] == pytest.approx(0.00006)
    assert len(fake_upstream.requests) == 3


def test_a_budget_held_by_requests_in_flight_is_a_short_wait_not_a_spent_budget(limited, gateway, clock,
                                                                                 fake_upstream):
    raw, team = limited(budget_cap_usd=Decimal("0.001"))
    spend = limits.spend_key(f"t{team.pk}", limits.period_of("monthly", clock.now)[0])
    backend = store.current()
    # Another request (another process, say) holds all that is left.
    asyncio.run(backend.reserve([store.Counter(spend, limits.nano("0.001"), 1, limits.nano("0.001"), 0, 60)], "other"))
    sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=raw, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="gpt-4.1", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "budget_exceeded" and "reserved by requests in flight" in refused.value.message
    headers = refused.value.response.headers
    assert headers["retry-after"] == "5" and "x-should-retry" not in headers  # the SDK may retry
    asyncio.run(backend.settle([(spend, limits.nano("0.001"), 0, 60)], "other", 1))  # it answered, cost nothing
    assert post(gateway, raw, chat(max_tokens=5)).status_code == 200
    assert not fake_upstream.requests[1:]
    assert [log.status_code for log in logs(gateway, 2)] == [429, 200]


def test_a_budget_holds_the_dearest_failover_target_and_never_fails_over_to_an_unpriced_one(
        limited, gateway, clock, fake_upstream, routing_policy):
    routing_policy("nano-then-opus", "failover", [
        {"provider": "openai", "model": "gpt-4.1-nano"}, {"provider": "anthropic", "model": "claude-opus-4-1"},
        {"provider": "openai", "model": "gpt-9-experimental"}], retry={"attempts": 0, "backoff_ms": 0})
    raw, team = limited(budget_cap_usd=Decimal("10"))
    spend = limits.spend_key(f"t{team.pk}", limits.period_of("monthly", clock.now)[0])
    fake_upstream.script("openai", delay=1.0)

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            answer = asyncio.create_task(client.post(gateway.proxy_url + "/v1/chat/completions",
                                                     json=chat(model="gpt-4.1-nano", max_tokens=1000),
                                                     headers={"Authorization": f"Bearer {raw}"}))
            held = await asyncio.to_thread(wait_for, lambda: counter(spend)[1])
            return await answer, held
    answer, held = asyncio.run(main())
    assert answer.status_code == 200 and answer.headers["x-smartflow-provider"] == "openai"
    assert held >= limits.nano(Decimal("0.075"))  # 1,000 out at Opus 4.1's $75 a million, not Nano's $0.4
    settled(spend)
    fake_upstream.script("openai", status=500)
    fake_upstream.script("anthropic", status=500)
    r = post(gateway, raw, chat(model="gpt-4.1-nano", max_tokens=5))
    assert r.status_code >= 500
    log = gateway.log(r.headers["x-smartflow-request-id"])
    assert [hop["model"] for hop in log.routing["chain"]] == ["gpt-4.1-nano", "claude-opus-4-1"]  # never served free
    assert "gpt-9-experimental: skipped (unpriced" in log.routing["reason"]
    assert len(fake_upstream.requests) == 3


def test_concurrent_requests_cannot_overrun_the_budget(limited, gateway, clock, fake_upstream):
    raw, team = limited(budget_cap_usd=Decimal("0.0003"))  # five requests' worth at $0.00006

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(gateway.proxy_url + "/v1/chat/completions",
                                                      json=chat(max_tokens=5),
                                                      headers={"Authorization": f"Bearer {raw}"})
                                          for _ in range(40)))
    served = [r.status_code for r in asyncio.run(main())].count(200)
    spend = limits.spend_key(f"t{team.pk}", limits.period_of("monthly", clock.now)[0])
    used, _ = settled(spend)
    # Each holds its worst case ($0.000056 for "hi" + 5 out) until settled: at most the cap's worth run.
    assert 1 <= served <= 6 and used == served * 60_000 and used <= 300_000 + 60_000
    assert len(logs(gateway, 40)) == 40


def test_a_cache_hit_counts_against_the_rate_but_not_tokens_or_budget(limited, gateway, clock, settings,
                                                                       fake_upstream):
    from proxy import policies

    settings.SMARTFLOW_CACHE = "exact"
    policies._built = None
    raw, team = limited(rpm_limit=3, tpm_limit=10_000, budget_cap_usd=Decimal("1"))
    body = chat(f"cache me {uuid.uuid4().hex}", max_tokens=50)
    tokens = window_key(f"t{team.pk}", "t", clock.now)
    spend = limits.spend_key(f"t{team.pk}", limits.period_of("monthly", clock.now)[0])
    assert post(gateway, raw, body).headers["x-smartflow-cache"] == "MISS"
    settled(tokens, 15)
    hit = post(gateway, raw, body)
    assert hit.headers["x-smartflow-cache"] == "HIT" and hit.headers["x-ratelimit-remaining-requests"] == "1"
    time.sleep(0.2)
    assert counter(tokens) == (15, 0) and counter(spend) == (60_000, 0)  # the hit's holds released, nothing used
    post(gateway, raw, body)
    refused = post(gateway, raw, body)
    assert refused.status_code == 429  # the fourth, hit or not
    assert refused.headers["x-smartflow-cache"] == "BYPASS"  # the lookup sent with the reservation is dropped unseen
    assert len(fake_upstream.requests) == 1
    traces = logs(gateway, 4)  # each its trace, written before the next test reads the traces
    assert [t.cache for t in traces][:3] == ["miss", "hit", "hit"] and traces[3].cache not in ("miss", "hit")


def test_a_stream_cancelled_midway_settles_at_what_was_used(limited, gateway, clock, fake_upstream):
    raw, team = limited(tpm_limit=100_000)
    tokens = window_key(f"t{team.pk}", "t", clock.now)
    fake_upstream.script("openai", stall_mid_stream=2)

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("POST", gateway.proxy_url + "/v1/chat/completions",
                                     json=chat("tell me a story", stream=True, max_tokens=4000),
                                     headers={"Authorization": f"Bearer {raw}"}) as s:
                async for chunk in s.aiter_bytes():
                    if b"content" in chunk:
                        break  # and leave
    asyncio.run(main())
    assert fake_upstream.wait_for_disconnects()
    used, held = settled(tokens)
    assert 0 < used < 100 and held == 0  # the prompt estimate and the output seen, not the 4,000 held
    log = logs(gateway, 1)[0]
    assert log.status_code == 499


def test_an_unpriced_model_is_recorded_as_such_and_kept_from_budgets(limited, gateway, settings, fake_upstream,
                                                                      management_client):
    from prometheus_client.parser import text_string_to_metric_families

    def unpriced_count():  # the counters are the process's: other tests' unpriced requests count too
        text = management_client.get("/metrics").text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "smartflow_unpriced_requests_total" and s.labels == {"provider": "openai",
                                                                                       "model": "other"})
    before = unpriced_count()
    raw, _ = limited()
    r = post(gateway, raw, {**chat(), "model": "gpt-9-experimental"})
    assert r.status_code == 200
    log = logs(gateway, 1)[0]
    assert log.unpriced and log.cost_usd == 0
    detail = management_client.get(f"/api/vas/logs/{log.pk}").json()["data"]
    assert detail["cost_usd"] is None and detail["unpriced"] is True
    row = management_client.get("/api/vas/logs").json()["data"][0]
    assert row["cost_usd"] is None and row["unpriced"] is True
    assert unpriced_count() == before + 1
    capped, _ = limited(budget_cap_usd=Decimal("5"))
    r = post(gateway, capped, {**chat(), "model": "gpt-9-experimental"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_unpriced"
    assert len(fake_upstream.requests) == 1
    settings.SMARTFLOW_LIMITS_ALLOW_UNPRICED = True
    assert post(gateway, capped, {**chat(), "model": "gpt-9-experimental"}).status_code == 200


def test_cached_prompt_tokens_reach_the_trace_at_their_own_prices(limited, gateway, fake_upstream):
    raw, _ = limited()
    fake_upstream.script("anthropic", body={
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 1000,
                  "cache_creation_input_tokens": 200}})
    claude = anthropic.Anthropic(base_url=gateway.proxy_url, api_key=raw, max_retries=0)
    claude.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    fake_upstream.script("openai", body={
        "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010,
                  "prompt_tokens_details": {"cached_tokens": 800}}})
    sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=raw, max_retries=0)
    sdk.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    costs = [log.cost_usd for log in logs(gateway, 2)]
    assert costs == [Decimal("0.0021"), Decimal("0.00088")]


@pytest.fixture
def own_redis(monkeypatch, redis_server):
    """A redis-server of the test's own (to kill or hang) and the limits' counters on it."""
    server, url = redis_server()
    own = store.RedisCounters(url)
    monkeypatch.setattr(store, "current", lambda: own)
    monkeypatch.setattr(store, "BACKOFF_S", 0.3)
    return server, own


def test_redis_killed_mid_test_fails_open_counting_here_or_closed_with_503(limited, gateway, own_redis, settings,
                                                                          fake_upstream):
    server, _ = own_redis
    raw, team = limited(rpm_limit=4)
    assert post(gateway, raw, chat()).status_code == 200  # counted in Redis
    server.kill()
    server.wait(5)
    started = time.perf_counter()
    down = [post(gateway, raw, chat()).status_code for _ in range(5)]
    assert down == [200, 200, 200, 200, 429]  # open: served and counted in this process (4 a minute)
    assert time.perf_counter() - started < 3
    health = httpx.get(gateway.proxy_url + "/health", timeout=10).json()
    assert "limits" in health["degraded"] and health["limits"]["on_failure"] == "open"
    settings.SMARTFLOW_LIMITS_FAIL = "closed"
    r = post(gateway, raw, chat())
    assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
    claude = post(gateway, raw, chat())  # and the Anthropic format
    r = httpx.post(gateway.proxy_url + "/v1/messages", timeout=10, headers={"x-api-key": raw},
                   json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["type"] == "error" and claude.status_code == 503
    assert len(fake_upstream.requests) == 5


def test_a_hung_redis_failing_open_serves_no_budget_past_its_last_known_spend_then_gets_the_spend(
        limited, gateway, own_redis, clock, fake_upstream):
    server, own = own_redis
    over, team_over = limited(budget_cap_usd=Decimal("0.0001"))  # $0.00006 a request
    fine, team_fine = limited(budget_cap_usd=Decimal("1"))
    unseen, _ = limited(budget_cap_usd=Decimal("1"))
    spend = {t: limits.spend_key(f"t{t.pk}", limits.period_of("monthly", clock.now)[0]) for t in (team_over, team_fine)}
    assert [post(gateway, over, chat(max_tokens=5)).status_code for _ in range(2)] == [200, 200]
    assert post(gateway, fine, chat(max_tokens=5)).status_code == 200
    wait_for(lambda: own.used([spend[team_over], spend[team_fine]]) == [120_000, 60_000])
    store.local.values.clear()  # what this process counted itself plays no part
    server.send_signal(signal.SIGSTOP)  # hung: calls time out
    r = post(gateway, over, chat(max_tokens=5))
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"  # over its cap in Redis
    r = post(gateway, unseen, chat(max_tokens=5))  # a budget this process never read: not served blind
    assert r.status_code == 503 and r.json()["error"]["code"] == "limits_unavailable"
    assert post(gateway, fine, chat(max_tokens=5)).status_code == 200  # under it: served, counted here
    assert len(fake_upstream.requests) == 4
    server.send_signal(signal.SIGCONT)
    # The spend served meanwhile reaches Redis once it answers again.
    wait_for(lambda: own.used([spend[team_fine]]) == [120_000], timeout=15)
    assert [log.status_code for log in logs(gateway, 6)] == [200, 200, 200, 429, 503, 200]


def test_a_refusal_that_redis_answers_while_the_request_is_built_never_reaches_the_provider(
        limited, gateway, own_redis, clock, fake_upstream):
    """On Redis the reservation is not waited for in the policy: the request is built meanwhile and
    waits for it just before it is sent. A refusal still sends nothing, a stream included, and
    answers as a refusal (not an in-band stream error)."""
    raw, _ = limited(rpm_limit=1)
    assert post(gateway, raw, chat()).status_code == 200  # loads the script on the gateway's connection
    r = post(gateway, raw, chat(stream=True))
    assert r.status_code == 429 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and r.headers["x-ratelimit-remaining-requests"] == "0"
    claude = httpx.post(gateway.proxy_url + "/v1/messages", timeout=10, headers={"x-api-key": raw},
                        json={"model": "claude-sonnet-4-6", "max_tokens": 5,
                              "messages": [{"role": "user", "content": "hi"}]})
    assert claude.status_code == 429 and claude.json()["error"]["type"] == "rate_limit_error"
    assert len(fake_upstream.requests) == 1
    assert [log.status_code for log in logs(gateway, 3)] == [200, 429, 429]


def test_a_reservation_left_in_flight_when_redis_lost_its_scripts_is_made_once(
        limited, gateway, own_redis, clock, fake_upstream):
    """The reservation goes as EVALSHA without being waited for; Redis having flushed its scripts
    refuses it (nothing reserved), and it is made again whole: counted once, not twice or never."""
    import redis

    server, own = own_redis
    raw, team = limited(rpm_limit=100, tpm_limit=100_000)
    requests = window_key(f"t{team.pk}", "r", clock.now)
    assert post(gateway, raw, chat()).status_code == 200
    redis.Redis.from_url(own.url).script_flush()
    assert post(gateway, raw, chat()).status_code == 200
    assert own_counter(own.url, requests)[0] == 2
    assert [log.status_code for log in logs(gateway, 2)] == [200, 200]


def test_a_request_that_ends_before_it_waits_for_its_reservation_leaves_no_hold(
        limited, gateway, own_redis, clock, settings, fake_upstream):
    """A request that fails between its reservation and the upstream call (here the upstream client refuses the
    URL before the gate), or whose client leaves while Redis is busy answering the reservation:
    its holds are settled when Redis answers; the request still counts against the rate."""
    import threading

    import redis

    server, own = own_redis
    url = own.url
    raw, team = limited(rpm_limit=100, tpm_limit=100_000)
    requests, tokens = (window_key(f"t{team.pk}", kind, clock.now) for kind in ("r", "t"))
    assert post(gateway, raw, chat()).status_code == 200
    wait_for(lambda: own_counter(url, tokens)[1] == 0)
    first_use = own_counter(url, tokens)[0]
    base_urls = settings.SMARTFLOW_BASE_URLS
    settings.SMARTFLOW_BASE_URLS = {**base_urls, "openai": "ftp://127.0.0.1:9/v1"}
    r = post(gateway, raw, chat(max_tokens=1000))
    assert r.status_code >= 500 and r.json()["error"]["message"]
    wait_for(lambda: own_counter(url, tokens) == (first_use, 0))  # the 1,000 held are released, nothing used
    settings.SMARTFLOW_BASE_URLS = base_urls

    busy = threading.Thread(target=lambda: redis.Redis.from_url(url).eval(
        "local s = redis.call('TIME') repeat local n = redis.call('TIME') "
        "until (n[1] - s[1]) * 1e6 + (n[2] - s[2]) >= 300000 return 1", 0))
    busy.start()
    time.sleep(0.05)  # Redis is in the script: the reservation waits for it
    with pytest.raises(httpx.TimeoutException):
        post_timeout = httpx.post(gateway.proxy_url + "/v1/chat/completions", json=chat(max_tokens=1000),
                                  headers={"Authorization": f"Bearer {raw}"}, timeout=0.1)
        del post_timeout
    busy.join()
    wait_for(lambda: own_counter(url, tokens) == (first_use, 0))
    assert own_counter(url, requests)[0] == 3
    assert len(fake_upstream.requests) == 1
    assert [log.status_code for log in logs(gateway, 3)] == [200, r.status_code, 499]


@pytest.mark.skipif(not REDIS, reason="two processes share limits through Redis (REDIS_URL)")
@pytest.mark.parametrize("limit, sent", [(50, 200), (1200, 2000)])  # the second long and large enough for slices
def test_two_gateway_processes_on_one_redis_serve_exactly_the_limit(limited, tmp_path, settings, limit, sent):
    from django.db import connection

    from metrics.tests.helpers import database_url
    from proxy.tests.test_serving import Served

    if connection.vendor == "sqlite" and "memory" in str(connection.settings_dict["NAME"]):
        pytest.skip("the processes need a database file or server they can share")
    raw, _ = limited(rpm_limit=limit)
    wait_for(lambda: 1 < time.time() % 60 < 8, timeout=65)  # the requests fall in one minute
    from tests.fake_upstream import FakeUpstream

    with FakeUpstream() as fake:
        served = [Served(tmp_path, fake, ["serve", "--host", "127.0.0.1"], redis=True, DATABASE_URL=database_url(),
                         SMARTFLOW_CACHE_PREFIX=settings.SMARTFLOW_CACHE_PREFIX, SMARTFLOW_CACHE="off")
                  for _ in range(2)]
        try:
            for process in served:  # ready, and each has served this key once (counted: 2 of the limit)
                process.wait_ready()
                assert httpx.post(process.url + "/v1/chat/completions", json=chat(), timeout=30,
                                  headers={"Authorization": f"Bearer {raw}"}).status_code == 200

            async def main():
                async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
                    room = asyncio.Semaphore(200)  # (httpx's pool slows down with thousands waiting in it)

                    async def one(i):
                        async with room:  # unevenly: a slice a process does not use must not refuse early
                            return await client.post(served[i % 4 == 0].url + "/v1/chat/completions",
                                                     json=chat(), headers={"Authorization": f"Bearer {raw}"})
                    return await asyncio.gather(*(one(i) for i in range(sent)))
            minute = time.time() // 60
            answers = asyncio.run(main())
            assert time.time() // 60 == minute, "the requests took more than the minute they began in"
        finally:
            for process in served:
                process.stop()
        statuses = [r.status_code for r in answers]
        # One counter for both: separate ones would have let up to twice the limit through.
        assert statuses.count(200) == limit - 2 and statuses.count(429) == sent - limit + 2
        assert len(fake.requests) == limit


def test_a_limit_of_zero_refuses_and_none_is_no_limit(limited, gateway, fake_upstream):
    raw, _ = limited(rpm_limit=0)
    assert post(gateway, raw, chat()).status_code == 429
    raw, _ = limited(tpm_limit=0)
    r = post(gateway, raw, chat())
    assert r.status_code == 429 and "retry-after" not in r.headers  # any prompt is larger than 0
    assert not fake_upstream.requests


def test_one_teams_exhausted_limit_never_touches_another_and_no_header_moves_it(limited, gateway, fake_upstream):
    first, team = limited(rpm_limit=1, tpm_limit=1000)
    second, _ = limited(rpm_limit=1, tpm_limit=1000)
    assert post(gateway, first, chat()).status_code == 200
    spoof = {"x-smartflow-team": team.name, "x-ratelimit-remaining-requests": "100", "x-api-key": second}
    assert post(gateway, first, chat(), **spoof).status_code == 429  # the Bearer key decides, nothing else
    assert post(gateway, second, chat()).status_code == 200


def test_hostile_output_caps_and_prompts_get_clean_answers(limited, gateway, fake_upstream):
    raw, _ = limited(tpm_limit=1000, budget_cap_usd=Decimal("10"))
    for body in (chat(max_tokens=10**30), chat(max_completion_tokens=2**63), chat(max_tokens="lots"),
                 {**chat(), "messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 50_000}]}]}):
        r = post(gateway, raw, body)
        assert r.status_code in (200, 400, 429), r.text
        assert r.headers["content-type"].startswith("application/json")


def test_the_admin_edits_limits_and_prices_and_the_gateway_follows(limited, gateway, master_key, fake_upstream):
    import re

    from proxy import prices
    from proxy.models import ModelPrice
    from sso.tests.test_key_sessions import signed_in

    raw, team = limited(budget_cap_usd=Decimal("1"))
    assert post(gateway, raw, chat()).status_code == 200
    with signed_in(gateway, master_key) as admin:
        assert admin.get("/admin/proxy/team/").status_code == 200  # the list syncs the live spend
        form = admin.get("/admin/proxy/modelprice/add/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        r = admin.post("/admin/proxy/modelprice/add/", data={
            "csrfmiddlewaretoken": token, "provider": "openai", "model": "gpt-9-experimental",
            "input_usd_per_mtok": "1", "output_usd_per_mtok": "2", "cache_read_usd_per_mtok": "",
            "cache_write_usd_per_mtok": ""}, follow_redirects=False)
        assert r.status_code == 302, r.text
        assert admin.get("/admin/proxy/virtualkey/").status_code == 200
    assert ModelPrice.objects.filter(model="gpt-9-experimental").exists()
    team.refresh_from_db()
    assert team.spent_usd == Decimal("0.00006")
    # Reloaded on the next request (stale while it reloads): no longer unpriced, so the budget allows it.
    wait_for(lambda: post(gateway, raw, {**chat(), "model": "gpt-9-experimental"}).status_code == 200)
    assert prices.table.last().lookup("openai", "gpt-9-experimental").output == 2
