"""The MetaCache across real wires: the live gateway, the fake upstream, the real openai and anthropic SDKs."""
import asyncio
import time
import uuid

import anthropic
import httpx
import openai
import orjson
import pytest

from conftest import MASTER_KEY, wait_for
from proxy.cache import store as stores
from tests.fake_upstream import COMPLETION_TOKENS, ECHO_PREFIX, PROMPT_TOKENS, TOOL_ARGUMENTS, openai_error
from traces.models import VASLog

WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture
def cached(settings, gateway):
    settings.SMARTFLOW_CACHE = "exact"
    store = stores.current()
    store.clear()
    yield gateway
    store.clear()


def chat(text=None, **extra):
    # Each test its own prompt: entries of one test never answer another's requests.
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": text or f"q {uuid.uuid4().hex}"}], **extra}


def post(client, body, **headers):
    return client.post("/v1/chat/completions", json=body, headers=headers)


def upstream_calls(fake):
    return len([r for r in fake.requests if r.provider != "unknown"])


def log_of(gateway, response) -> VASLog:
    return gateway.log(response.headers["x-smartflow-request-id"])


@pytest.fixture
def sdk(cached, master_key):
    return openai.OpenAI(base_url=cached.proxy_url + "/v1", api_key=master_key, max_retries=0)


@pytest.fixture
def claude(cached, master_key):
    return anthropic.Anthropic(base_url=cached.proxy_url, api_key=master_key, max_retries=0)


def test_a_repeat_is_answered_from_the_cache(cached, proxy_client, fake_upstream):
    body = chat()
    first = post(proxy_client, body)
    assert first.status_code == 200 and first.headers["x-smartflow-cache"] == "MISS"
    second = post(proxy_client, body)
    assert second.status_code == 200, second.text
    assert second.headers["x-smartflow-cache"] == "HIT" and int(second.headers["age"]) >= 0
    assert upstream_calls(fake_upstream) == 1
    assert (second.headers["x-smartflow-provider"], second.headers["x-smartflow-model"]) == ("openai", "gpt-4.1")
    a, b = first.json(), second.json()
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]
    assert b["id"] != a["id"] and b["model"] == "gpt-4.1"
    miss, hit = log_of(cached, first), log_of(cached, second)
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert miss.cost_usd > 0 and hit.cost_usd == 0
    assert (hit.tokens_input, hit.tokens_output) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert hit.cache_meta["key"] == miss.cache_meta["key"] and len(hit.cache_meta["key"]) == 32
    assert hit.cache_meta["ttl_s"] == 3600 and hit.cache_meta["age_s"] >= 0
    assert hit.cache_meta["saved_usd"] == pytest.approx(float(miss.cost_usd))
    assert hit.response["choices"] == a["choices"] and hit.status_code == 200
    detail = httpx.get(f"{cached.management_url}/api/vas/logs/{hit.id}",
                       headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["data"]
    assert detail["cache"] == "hit" and detail["cache_meta"] == hit.cache_meta


def test_the_cache_is_off_when_configured(settings, gateway, proxy_client, fake_upstream):
    settings.SMARTFLOW_CACHE = "off"
    body = chat()
    assert [post(proxy_client, body).headers["x-smartflow-cache"] for _ in range(2)] == ["BYPASS", "BYPASS"]
    assert upstream_calls(fake_upstream) == 2


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_stream_is_replayed_from_an_answer_stored_whole(sdk, fake_upstream, include_usage):
    body = chat()
    stored = sdk.chat.completions.create(**body)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    with sdk.chat.completions.stream(**body, **options) as stream:
        final = stream.get_final_completion()
    assert upstream_calls(fake_upstream) == 1
    assert final.choices[0].message.content == stored.choices[0].message.content
    assert final.choices[0].finish_reason == "stop" and final.model == "gpt-4.1" and final.id != stored.id
    assert (final.usage is not None) == include_usage
    if include_usage:
        assert final.usage.completion_tokens == COMPLETION_TOKENS


def test_the_replayed_stream_has_a_live_streams_events(cached, proxy_client, fake_upstream):
    body = chat()
    post(proxy_client, body)
    r = post(proxy_client, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["x-smartflow-cache"] == "HIT" and r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    log = log_of(cached, r)
    assert log.cache == "hit" and log.stream and log.status_code == 200


def test_a_whole_answer_is_replayed_from_a_stored_stream(sdk, fake_upstream):
    body = chat()
    with sdk.chat.completions.stream(**body) as stream:
        streamed = stream.get_final_completion()
    whole = sdk.chat.completions.with_raw_response.create(**body)
    assert whole.headers["x-smartflow-cache"] == "HIT" and upstream_calls(fake_upstream) == 1
    assert whole.parse().choices[0].message.content == streamed.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_replayed(sdk, fake_upstream, stream):
    body = chat("what is the weather in Paris?", tools=WEATHER)
    sdk.chat.completions.create(**body)
    if stream:
        with sdk.chat.completions.stream(**body) as s:
            final = s.get_final_completion()
    else:
        final = sdk.chat.completions.create(**body)
    assert upstream_calls(fake_upstream) == 1
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == TOOL_ARGUMENTS
    assert final.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_both_client_formats_share_an_entry_for_the_same_upstream_model(sdk, claude, fake_upstream, stream):
    text = f"shared {uuid.uuid4().hex}"
    stored = sdk.chat.completions.create(**chat(text, max_tokens=50))
    kwargs = {"model": "gpt-4.1", "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
    if stream:
        with claude.messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        raw = claude.messages.with_raw_response.create(**kwargs)
        assert raw.headers["x-smartflow-cache"] == "HIT"
        message = raw.parse()
    assert upstream_calls(fake_upstream) == 1
    assert message.content[0].text == stored.choices[0].message.content == ECHO_PREFIX + text
    assert message.model == "gpt-4.1" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == COMPLETION_TOKENS
    # ... and the other way round: an Anthropic client's entry serves an OpenAI client.
    text = f"other way {uuid.uuid4().hex}"
    claude.messages.create(**{**kwargs, "messages": [{"role": "user", "content": text}]})
    again = sdk.chat.completions.with_raw_response.create(**chat(text, max_tokens=50))
    assert again.headers["x-smartflow-cache"] == "HIT" and again.parse().choices[0].message.content == ECHO_PREFIX + text


def test_native_anthropic_pass_through_is_not_cached(claude, fake_upstream):
    kwargs = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": "native"}]}
    outcomes = [claude.messages.with_raw_response.create(**kwargs).headers["x-smartflow-cache"] for _ in range(2)]
    assert outcomes == ["BYPASS", "BYPASS"] and upstream_calls(fake_upstream) == 2


def test_two_teams_never_share_an_entry(cached, fake_upstream):
    from proxy.models import Team, VirtualKey

    keys = [VirtualKey.issue(Team.objects.create(name=f"team-{i}"), name="k")[1] for i in range(2)]
    body = chat()
    outcomes = []
    for key in (*keys, MASTER_KEY, *keys):
        r = httpx.post(cached.proxy_url + "/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {key}"})
        outcomes.append(r.headers["x-smartflow-cache"])
    assert outcomes == ["MISS", "MISS", "MISS", "HIT", "HIT"]
    assert upstream_calls(fake_upstream) == 3


def test_crafted_headers_never_reach_another_teams_entry(cached, fake_upstream):
    from proxy.models import Team, VirtualKey

    victim_team = Team.objects.create(name="victim")
    victim = VirtualKey.issue(victim_team, name="k")[1]
    attacker = VirtualKey.issue(Team.objects.create(name="attacker"), name="k")[1]
    body = chat()
    first = httpx.post(cached.proxy_url + "/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {victim}"})
    victims_key = log_of(cached, first).cache_meta["key"]
    outcomes = []
    for extra in ({"x-smartflow-team": "victim"}, {"x-smartflow-team-id": str(victim_team.id)},
                  {"x-api-key": victim}, {"x-smartflow-cache-key": victims_key}, {"cookie": "team=victim"}):
        r = httpx.post(cached.proxy_url + "/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {attacker}", **extra})
        assert r.status_code == 200 and log_of(cached, r).team == "attacker"
        assert log_of(cached, r).cache_meta["key"] != victims_key, extra
        outcomes.append(r.headers["x-smartflow-cache"])
    assert outcomes == ["MISS"] + ["HIT"] * 4  # the attacker's own entry, never the victim's


CHANGES = {
    "temperature": 0.3, "top_p": 0.5, "max_tokens": 17, "max_completion_tokens": 17, "stop": ["END"],
    "seed": 7, "tools": WEATHER, "tool_choice": "none", "response_format": {"type": "json_object"},
    "reasoning_effort": "high", "n": 2, "presence_penalty": 0.5, "frequency_penalty": 0.5, "logit_bias": {"50256": -1},
    "a_parameter_from_next_year": {"x": 1},
}


@pytest.mark.parametrize("name", CHANGES)
def test_a_change_in_an_answer_changing_parameter_is_a_miss(cached, proxy_client, fake_upstream, name):
    base = chat("describe the weather" if name == "tool_choice" else None,
                **({"tools": WEATHER} if name == "tool_choice" else {}))
    assert post(proxy_client, base).headers["x-smartflow-cache"] == "MISS"
    changed = post(proxy_client, {**base, name: CHANGES[name]})
    assert changed.headers["x-smartflow-cache"] == "MISS", changed.text
    assert post(proxy_client, base).headers["x-smartflow-cache"] == "HIT"


def test_a_change_in_the_messages_or_model_is_a_miss(cached, proxy_client):
    base = chat()
    post(proxy_client, base)
    longer = {**base, "messages": [*base["messages"], {"role": "assistant", "content": "x"},
                                   {"role": "user", "content": "y"}]}
    assert post(proxy_client, longer).headers["x-smartflow-cache"] == "MISS"
    assert post(proxy_client, {**base, "model": "gpt-4.1-mini"}).headers["x-smartflow-cache"] == "MISS"
    assert post(proxy_client, base, **{"x-smartflow-provider": "anthropic"}).headers["x-smartflow-cache"] == "MISS"
    assert post(proxy_client, {**base, "model": "openai/gpt-4.1"}).headers["x-smartflow-cache"] == "HIT"


@pytest.mark.parametrize("extra", [{"user": "someone-else"}, {"metadata": {"run": "42"}}, {"stream": False},
                                   {"stream_options": None}])
def test_what_does_not_change_the_answer_is_a_hit(cached, proxy_client, fake_upstream, extra):
    base = chat(user="me", metadata={"run": "1"})
    post(proxy_client, base)
    assert post(proxy_client, {**base, **extra}).headers["x-smartflow-cache"] == "HIT"
    assert upstream_calls(fake_upstream) == 1


def test_a_ttl_expires(cached, proxy_client, fake_upstream):
    body = chat()
    post(proxy_client, body, **{"x-smartflow-cache-ttl": "1"})
    hit = post(proxy_client, body)
    assert hit.headers["x-smartflow-cache"] == "HIT" and log_of(cached, hit).cache_meta["ttl_s"] == 1
    time.sleep(1.1)
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "MISS"
    assert upstream_calls(fake_upstream) == 2


def test_the_configured_ttl(cached, settings, proxy_client):
    settings.SMARTFLOW_CACHE_TTL = 1
    body = chat()
    post(proxy_client, body)
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "HIT"
    time.sleep(1.1)
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "MISS"


def test_per_request_cache_controls(cached, proxy_client, fake_upstream):
    body = chat()
    assert post(proxy_client, body, **{"cache-control": "no-store"}).headers["x-smartflow-cache"] == "BYPASS"
    assert post(proxy_client, body, **{"x-smartflow-cache-ttl": "0"}).headers["x-smartflow-cache"] == "BYPASS"
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "MISS"  # nothing was stored
    assert post(proxy_client, body, **{"cache-control": "No-Cache"}).headers["x-smartflow-cache"] == "MISS"
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "HIT"
    assert post(proxy_client, body, **{"cache-control": "max-age=0, no-store"}).headers["x-smartflow-cache"] == "BYPASS"
    assert upstream_calls(fake_upstream) == 5
    bypass = post(proxy_client, body, **{"cache-control": "no-store"})
    assert log_of(cached, bypass).cache == "bypass"


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "99999999999", "", "1e3", "3600, 5"])
def test_a_bad_ttl_header_is_a_400_in_the_clients_format(cached, proxy_client, claude, fake_upstream, value):
    r = post(proxy_client, chat(), **{"x-smartflow-cache-ttl": value})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-smartflow-cache-ttl"
    assert log_of(cached, r).status_code == 400
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="gpt-4.1", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                               extra_headers={"x-smartflow-cache-ttl": value})
    assert err.value.body["error"]["type"] == "invalid_request_error" and "x-smartflow-cache-ttl" in str(err.value)
    assert upstream_calls(fake_upstream) == 0


@pytest.mark.parametrize("reset", [False, True])
def test_a_stream_cut_by_the_upstream_is_not_stored(cached, proxy_client, fake_upstream, reset):
    body = chat(stream=True)
    fake_upstream.script("openai", fail_mid_stream=2, reset=reset)
    cut = post(proxy_client, body)
    assert "[DONE]" not in cut.text
    again = post(proxy_client, body)
    assert again.headers["x-smartflow-cache"] == "MISS" and "[DONE]" in again.text
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "HIT"


def test_a_stream_with_broken_tool_call_json_is_not_stored(cached, proxy_client, fake_upstream):
    def event(delta, finish=None):
        return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4.1",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    fake_upstream.script("openai", stream_events=[
        event({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                    "function": {"name": "get_weather", "arguments": "{\"ci"}}]}),
        event({}, "tool_calls")])
    body = chat(stream=True, tools=WEATHER)
    assert post(proxy_client, body).status_code == 200
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "MISS"


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_error_is_not_stored(cached, proxy_client, fake_upstream, stream):
    body = chat(stream=stream)
    fake_upstream.script("openai", status=500, body=openai_error(500, "boom"))
    assert post(proxy_client, body).status_code >= 500
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "MISS"


def test_a_huge_prompt_is_cached(cached, proxy_client, fake_upstream):
    body = chat("x" * 1_000_000)
    post(proxy_client, body)
    hit = post(proxy_client, body)
    assert hit.headers["x-smartflow-cache"] == "HIT" and upstream_calls(fake_upstream) == 1


def test_the_in_process_store_is_bounded_by_bytes(cached, settings, proxy_client):
    settings.SMARTFLOW_CACHE_MAX_BYTES = 3000
    if settings.REDIS_URL:
        pytest.skip("the byte bound is the in-process store's")
    try:
        bodies = [chat("y" * 1000 + uuid.uuid4().hex) for _ in range(5)]
        for body in bodies:
            post(proxy_client, body)
        held = stores.current().stats()
        assert 0 < held["bytes"] <= 3000 and held["entries"] < 5
        assert post(proxy_client, bodies[-1]).headers["x-smartflow-cache"] == "HIT"
        assert post(proxy_client, bodies[0]).headers["x-smartflow-cache"] == "MISS"  # least recently used went
    finally:
        settings.SMARTFLOW_CACHE_MAX_BYTES = 64 * 1024 * 1024


def test_a_dead_redis_means_uncached_answers(cached, proxy_client, fake_upstream, monkeypatch, management_client):
    from conftest import free_port

    dead = stores.RedisStore(f"redis://127.0.0.1:{free_port()}/0", "dead")
    monkeypatch.setattr(stores, "current", lambda: dead)
    monkeypatch.setattr("proxy.views.metacache_store", lambda: dead)
    from proxy import policies

    monkeypatch.setattr(policies, "_built", None)  # the chain takes the store when it is built
    body = chat()
    started = time.perf_counter()
    answers = [post(proxy_client, body) for _ in range(3)]
    assert time.perf_counter() - started < 5
    assert [(r.status_code, r.headers["x-smartflow-cache"]) for r in answers] == [(200, "BYPASS")] * 3
    assert upstream_calls(fake_upstream) == 3
    assert log_of(cached, answers[0]).cache == "bypass"
    health = httpx.get(cached.proxy_url + "/health").json()
    assert health["status"] == "degraded" and "metacache" in health["degraded"]
    assert health["metacache"]["ok"] is False and health["metacache"]["backend"] == "redis"
    stats = management_client.get("/api/cache")
    assert stats.status_code == 200 and stats.json()["data"]["entries"] == 0
    cleared = management_client.delete("/api/cache")
    assert cleared.status_code == 503 and cleared.json()["success"] is False
    monkeypatch.setattr(policies, "_built", None)


def test_the_answer_does_not_wait_for_redis_to_confirm_the_store(cached, proxy_client, fake_upstream, monkeypatch):
    """A miss is answered while Redis still sits on the write of its entry (a Redis that answers a
    lookup at once and the store only when told: waiting for it cost every miss a round trip)."""
    import socket
    import threading

    import hiredis

    from conftest import free_port
    from proxy import policies

    port, release, seen = free_port(), threading.Event(), []
    listener = socket.create_server(("127.0.0.1", port))

    def serve():
        conn, _ = listener.accept()
        reader = hiredis.Reader()
        while data := conn.recv(65536):
            reader.feed(data)
            while (command := reader.gets()) is not False:
                seen.append(command[0])
                if command[0] == b"GET":
                    conn.sendall(b"$-1\r\n")
                else:
                    release.wait(10)
                    conn.sendall(b":1\r\n")
    threading.Thread(target=serve, daemon=True).start()
    slow = stores.RedisStore(f"redis://127.0.0.1:{port}/0", "slow")
    monkeypatch.setattr(stores, "current", lambda: slow)
    monkeypatch.setattr(policies, "_built", None)  # the chain takes the store when it is built
    try:
        r = post(proxy_client, chat())
        assert (r.status_code, r.headers["x-smartflow-cache"]) == (200, "MISS")
        wait_for(lambda: b"EVAL" in seen)  # the store's script, sent whole on a new connection
        assert not release.is_set() and slow.down_until == 0  # answered before Redis confirmed, and not a failure
    finally:
        release.set()
        listener.close()
        monkeypatch.setattr(policies, "_built", None)


def test_health_names_the_metacache(cached):
    health = httpx.get(cached.proxy_url + "/health").json()
    assert health["metacache"]["ok"] is True and health["metacache"]["mode"] == "exact"
    assert "metacache" not in health["degraded"]


def test_the_cache_api(cached, proxy_client, management_client, client, django_user_model):
    from django.conf import settings

    def stats():
        return management_client.get("/api/cache").json()["data"]
    cached.flush_traces()
    before = stats()
    body = chat()
    post(proxy_client, body)
    post(proxy_client, body)
    post(proxy_client, body)
    cached.flush_traces()
    data = wait_for(lambda: (lambda d: d if d["hits"] >= before["hits"] + 2 else None)(stats()))
    assert data["backend"] == ("redis" if settings.REDIS_URL else "memory")
    assert data["mode"] == "exact" and data["entries"] == 1 and data["bytes"] > 100
    assert (data["hits"] - before["hits"], data["misses"] - before["misses"]) == (2, 1)
    assert data["hit_rate"] == pytest.approx(data["hits"] / (data["hits"] + data["misses"]))

    member = django_user_model.objects.create_user("member", password="x")
    client.force_login(member)
    assert client.get("/api/cache", SERVER_PORT=cached.management_port).status_code == 200
    assert client.delete("/api/cache", SERVER_PORT=cached.management_port).status_code == 403
    assert httpx.delete(cached.management_url + "/api/cache").status_code in (401, 403)
    assert stats()["entries"] == 1

    assert management_client.delete("/api/cache").json() == {"success": True}
    assert stats()["entries"] == 0 and stats()["bytes"] == 0
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "MISS"


def test_the_metrics_cache_series_come_from_the_cache(cached, proxy_client, management_client):
    def series():
        text = management_client.get("/metrics").text
        return [next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))
                for name in ("smartflow_cache_entries", "smartflow_cache_size_bytes")]

    body = chat()
    post(proxy_client, body)
    # The store reaches Redis with the gateway's next write to it, or within 5 ms: the scrape reads Redis.
    size = wait_for(lambda: (lambda found: found if found[0] == 1 else None)(series()))[1]
    assert size == stores.current().stats()["bytes"] > 0


def test_cache_meta_with_odd_content_is_stored(db):
    from traces.writer import write_batch

    from traces.trace import Trace

    trace = Trace("chat.completions")
    trace.set(status_code=200, cache="hit", cache_meta={"key": "a\x00b" * 100, "age_s": 2**40, "ttl_s": 0,
                                                         "saved_usd": 1e-12, "similarity": 0.95,
                                                         "odd": ["\ud7ff", "é" * 10_000, None, {"n": -1}]})
    write_batch([trace.record()])
    log = VASLog.objects.get(pk=trace.id)
    assert log.cache == "hit" and log.cache_meta["key"] == "a\ufffdb" * 100
    assert log.cache_meta["age_s"] == 2**40 and log.cache_meta["odd"][1] == "é" * 10_000


def test_the_redis_store_round_trips(settings):
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL")
    store = stores.RedisStore(settings.REDIS_URL, f"test-{uuid.uuid4().hex[:8]}")

    async def scenario():
        await store.put("k1", b"a" * 100, 30)
        await store.put("k1", b"b" * 40, 30)  # replaced: its size is counted once
        await store.put("k2", b"c" * 10, 1)
        return await store.get("k1"), await store.get("nope")
    assert asyncio.run(scenario()) == (b"b" * 40, None)
    assert store.stats() == {"entries": 2, "bytes": 50, "ok": True}
    assert store.sync().ttl(store.entry("k1")) in range(28, 31)  # the TTL is Redis' own
    time.sleep(1.2)
    assert store.stats() == {"entries": 1, "bytes": 40, "ok": True}
    store.clear()
    assert store.stats() == {"entries": 0, "bytes": 0, "ok": True}


@pytest.fixture
def semantic_mode(settings, cached):
    from proxy.cache import semantic

    settings.SMARTFLOW_CACHE = "semantic"
    semantic.index().clear()
    yield cached
    semantic.index().clear()


def test_semantic_mode_answers_a_paraphrase_and_not_a_looser_one(semantic_mode, proxy_client, fake_upstream):
    seed = int(uuid.uuid4().int % 10**6)  # this test's own scope
    original = post(proxy_client, chat("What is the capital of France?", seed=seed))
    assert original.headers["x-smartflow-cache"] == "MISS"
    paraphrase = post(proxy_client, chat("What's the capital of France?", seed=seed, stream=True))
    assert paraphrase.headers["x-smartflow-cache"] == "HIT", paraphrase.text
    assert ECHO_PREFIX + "What is the capital of France?" in paraphrase.text  # the original's answer
    meta = log_of(semantic_mode, paraphrase).cache_meta
    assert meta["key"] == log_of(semantic_mode, original).cache_meta["key"]
    assert 0.95 <= meta["similarity"] < 1
    looser = post(proxy_client, chat("Tell me the capital of France.", seed=seed))  # ~0.90: below 0.95
    assert looser.headers["x-smartflow-cache"] == "MISS"
    assert "similarity" not in log_of(semantic_mode, looser).cache_meta
    other_params = post(proxy_client, chat("What's the capital of France?", seed=seed + 1))
    assert other_params.headers["x-smartflow-cache"] == "MISS"  # a semantic hit needs the same parameters
    assert upstream_calls(fake_upstream) == 3


def test_exact_mode_does_not_answer_paraphrases(cached, proxy_client):
    seed = int(uuid.uuid4().int % 10**6)
    post(proxy_client, chat("What is the capital of France?", seed=seed))
    assert post(proxy_client, chat("What's the capital of France?", seed=seed)).headers["x-smartflow-cache"] == "MISS"


def test_redis_killed_mid_test_means_uncached_answers_then_recovers(cached, proxy_client, fake_upstream, monkeypatch,
                                                                     tmp_path):
    import shutil
    import subprocess

    from conftest import free_port
    from proxy import policies

    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server")
    port = free_port()

    def start():
        process = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                                    "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        wait_for(lambda: stores.RedisStore(f"redis://127.0.0.1:{port}/0", "probe").status()["ok"])
        return process
    server = start()
    try:
        own = stores.RedisStore(f"redis://127.0.0.1:{port}/0", "killed")
        monkeypatch.setattr(stores, "current", lambda: own)
        monkeypatch.setattr(stores, "BACKOFF_S", 0.3)
        monkeypatch.setattr(policies, "_built", None)
        body = chat()
        assert [post(proxy_client, body).headers["x-smartflow-cache"] for _ in range(2)] == ["MISS", "HIT"]
        server.kill()
        server.wait(5)
        started = time.perf_counter()
        down = [post(proxy_client, body) for _ in range(3)]
        assert [(r.status_code, r.headers["x-smartflow-cache"]) for r in down] == [(200, "BYPASS")] * 3
        assert time.perf_counter() - started < 3
        server = start()  # back, empty: after the back-off the cache works again
        time.sleep(0.4)
        assert [post(proxy_client, body).headers["x-smartflow-cache"] for _ in range(2)] == ["MISS", "HIT"]
        assert upstream_calls(fake_upstream) == 5
    finally:
        server.kill()
        server.wait(5)
        monkeypatch.setattr(policies, "_built", None)


def test_a_configured_ttl_of_zero_stores_nothing(cached, settings, proxy_client, fake_upstream):
    settings.SMARTFLOW_CACHE_TTL = 0
    body = chat()
    assert [post(proxy_client, body).headers["x-smartflow-cache"] for _ in range(2)] == ["MISS", "MISS"]
    settings.SMARTFLOW_CACHE_TTL = 3600  # and the store still works right after (no back-off was caused)
    assert [post(proxy_client, body).headers["x-smartflow-cache"] for _ in range(2)] == ["MISS", "HIT"]


def test_an_entry_stored_before_a_redact_rule_never_answers_the_redacted_prompt(cached, proxy_client, fake_upstream):
    """The lookup goes to Redis before the guardrails run, keyed on the prompt as the client sent it.
    Once a rule redacts that prompt, the entry stored under the unredacted key must not answer it."""
    from proxy.models import GuardrailPolicy
    from proxy.policies.guardrails import policies as guardrail_policies

    if stores.current().backend != "redis":
        pytest.skip("the lookup sent ahead is the Redis store's (REDIS_URL)")
    email = "jane.roe@example.org"
    body = chat(f"write to {email} {uuid.uuid4().hex}")
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "MISS"
    assert post(proxy_client, body).headers["x-smartflow-cache"] == "HIT"
    GuardrailPolicy.objects.create(name="pii", kind="pii", action="redact", on="both")
    guardrail_policies.invalidate()
    guardrail_policies.get_sync()
    try:
        r = post(proxy_client, body)
        assert r.status_code == 200 and r.headers["x-smartflow-cache"] == "MISS"
        assert upstream_calls(fake_upstream) == 2
        last = [q for q in fake_upstream.requests if q.provider != "unknown"][-1]
        assert email not in last.raw.decode() and "<EMAIL_ADDRESS>" in last.raw.decode()
        assert post(proxy_client, body).headers["x-smartflow-cache"] == "HIT"  # the redacted prompt's own entry
        assert upstream_calls(fake_upstream) == 2
    finally:
        GuardrailPolicy.objects.all().delete()
        guardrail_policies.invalidate()
        guardrail_policies.get_sync()
