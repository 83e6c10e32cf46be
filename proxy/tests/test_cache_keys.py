"""The cache key builder and the per-request cache-control parser, under Hypothesis."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cache.keys import EXCLUDED, MAX_TTL, cache_key, parse_controls
from proxy.providers.base import ClientError

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=3),
                           max_leaves=8)
names = st.text(min_size=1, max_size=12)
bodies = st.dictionaries(names.filter(lambda n: n not in EXCLUDED), json_values, max_size=6).map(
    lambda b: {**b, "messages": [{"role": "user", "content": "x"}]})
excluded = st.dictionaries(st.sampled_from(sorted(EXCLUDED)), json_values)


@given(bodies, excluded, excluded)
def test_bodies_differing_only_in_excluded_fields_share_a_key(body, a, b):
    assert cache_key("t", "openai", "gpt-4.1", {**body, **a}) == cache_key("t", "openai", "gpt-4.1", {**body, **b})


@given(bodies, names.filter(lambda n: n not in EXCLUDED), json_values)
def test_any_other_difference_changes_the_key(body, name, value):
    changed = {**body, name: value}
    if changed == body:
        return
    assert cache_key("t", "openai", "gpt-4.1", changed) != cache_key("t", "openai", "gpt-4.1", body)


@given(bodies, st.text(max_size=10), st.text(max_size=10))
def test_the_team_and_model_are_in_the_key(body, team, other):
    if team != other:
        assert cache_key(team, "openai", "m", body) != cache_key(other, "openai", "m", body)
        assert cache_key("t", "openai", team, body) != cache_key("t", "openai", other, body)


def test_key_order_does_not_matter():
    assert cache_key("t", "p", "m", {"a": 1, "b": {"x": 1, "y": 2}}) == cache_key("t", "p", "m",
                                                                                 {"b": {"y": 2, "x": 1}, "a": 1})


directives = st.lists(st.sampled_from(["no-cache", "no-store", "max-age=0", "private", "NO-CACHE", " no-store ",
                                       "no-transform"]) | st.text(max_size=10), max_size=4)


@given(directives)
def test_cache_control_never_fails_and_no_store_wins(parts):
    lookup, store, ttl = parse_controls({"cache-control": ",".join(parts)})
    names = {p.split("=")[0].strip().lower() for p in ",".join(parts).split(",")}
    assert ttl is None
    assert store == ("no-store" not in names)
    assert lookup == ("no-store" not in names and "no-cache" not in names)


@given(st.text(max_size=12))
def test_the_ttl_header_is_a_number_of_seconds_or_a_400(value):
    try:
        lookup, store, ttl = parse_controls({"x-smartflow-cache-ttl": value})
    except ClientError as err:
        assert err.param == "x-smartflow-cache-ttl"
        stripped = value.strip()
        assert not (stripped.isascii() and stripped.isdigit() and int(stripped) <= MAX_TTL)
        return
    assert ttl == int(value.strip()) and 0 <= ttl <= MAX_TTL
    assert (lookup, store) == ((False, False) if ttl == 0 else (True, True))


@pytest.mark.parametrize("value", ["0", "1", str(MAX_TTL)])
def test_ttl_bounds(value):
    assert parse_controls({"x-smartflow-cache-ttl": value})[2] == int(value)
