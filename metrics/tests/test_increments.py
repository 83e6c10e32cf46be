"""A flush's counters: what its requests add, summed per label set before they are counted."""
from collections import defaultdict

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from metrics import store

notes = st.tuples(
    st.sampled_from(["openai", "anthropic", "gemini", None, "bogus"]),
    st.sampled_from(["gpt-4.1", "claude-sonnet-4-6", "", "no-such-model"]),
    st.sampled_from([200, 400, 429, 500, 502, 503, 504, 0, None]),
    st.sampled_from(["hit", "miss", "bypass", None]),
    st.one_of(st.none(), st.integers(0, 10**7)),
    st.one_of(st.none(), st.integers(0, 10**7)),
    st.one_of(st.none(), st.sampled_from([0, 0.5, "0.00012345", 1e-8])),
    st.one_of(st.none(), st.floats(-10, 1e6, allow_nan=False)),
    st.one_of(st.none(), st.booleans()),
    st.sampled_from([(), (("openai", "anthropic"),), (("anthropic", "openai"), ("openai", "gemini"))]),
)


@hsettings(max_examples=200, deadline=None)
@given(st.lists(notes, max_size=40))
def test_a_flush_adds_what_its_requests_add_one_by_one(batch):
    alone = defaultdict(float)
    for note in batch:
        for name, value in store.increments([note]).items():
            alone[name] += value
    together = store.increments(batch)
    assert set(together) == set(alone)
    for name, value in alone.items():
        assert together[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_one_request_counts_each_counter_once():
    out = store.increments([("anthropic", "claude-sonnet-4-6", 502, "miss", 10, 0, 0.5, 2.5, True,
                             (("openai", "anthropic"),))])
    names = {name.split(store.SEP)[0]: value for name, value in out.items()}
    assert names["smartflow_requests_total"] == 1 and names["smartflow_cache_misses_total"] == 1
    assert names["smartflow_tokens_input_total"] == 10 and "smartflow_tokens_output_total" not in names
    assert names["smartflow_cost_usd_total"] == 0.5 and names["smartflow_unpriced_requests_total"] == 1
    assert names["smartflow_provider_errors_total"] == 1 and names["smartflow_failovers_total"] == 1
