"""GET /metrics on the management port: format, the contract's metrics, exact counters, bounded labels."""
import shutil
import subprocess

import httpx
import pytest

from metrics import registry
from metrics.store import counters

CONTRACT_METRICS = [
    ("smartflow_requests_total", "counter"), ("smartflow_cache_hits_total", "counter"),
    ("smartflow_cache_misses_total", "counter"), ("smartflow_latency_p50_seconds", "gauge"),
    ("smartflow_latency_p90_seconds", "gauge"), ("smartflow_latency_p99_seconds", "gauge"),
    ("smartflow_tokens_input_total", "counter"), ("smartflow_tokens_output_total", "counter"),
    ("smartflow_provider_errors_total", "counter"), ("smartflow_cache_hit_rate", "gauge"),
    ("smartflow_cache_size_bytes", "gauge"),
]
CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "count me"}]}


def test_it_serves_text_format_0_0_4_without_auth(scrape):
    s = scrape()
    assert s.response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    for name, kind in CONTRACT_METRICS:
        assert f"# HELP {name} " in s.text, name
        assert f"# TYPE {name} {kind}\n" in s.text, name
    assert "# TYPE smartflow_overhead_seconds histogram" in s.text
    # django-prometheus's own metrics on the same endpoint
    assert "django_http_requests_before_middlewares_total" in s.text


def test_it_is_not_on_the_proxy_port(gateway):
    assert httpx.get(f"{gateway.proxy_url}/metrics").status_code == 404


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian's prometheus package) not installed")
def test_promtool_accepts_the_exposition(scrape, proxy_client):
    assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 200
    text = scrape().text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    # promtool exits 1 for lint warnings (naming advice) and 3 for parse errors; neither may happen here.
    assert result.returncode == 0, result.stdout + result.stderr


def test_counters_grow_by_exactly_what_was_proxied(scrape, proxy_client, fake_upstream):
    before = scrape()
    for _ in range(3):
        assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 200
    stream = proxy_client.post("/v1/chat/completions", json={**CHAT, "stream": True,
                                                             "stream_options": {"include_usage": True}})
    assert stream.status_code == 200
    fake_upstream.script("openai", status=500, body={"error": {"message": "boom", "type": "server_error"}})
    assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 502
    assert proxy_client.post("/v1/chat/completions", json={"model": "gpt-4.1"}).status_code == 400
    after = scrape()

    def grew(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    openai = {"provider": "openai", "model": "gpt-4.1"}
    assert grew("smartflow_requests_total") == 6
    assert grew("smartflow_requests_total", status="2xx", **openai) == 4
    assert grew("smartflow_requests_total", status="5xx", **openai) == 1
    assert grew("smartflow_requests_total", status="4xx", provider="none", model="other") == 1
    assert grew("smartflow_tokens_input_total", **openai) == 4 * 10
    assert grew("smartflow_tokens_output_total", **openai) == 4 * 5
    assert grew("smartflow_provider_errors_total", provider="openai", status="5xx") == 1
    assert grew("smartflow_overhead_seconds_count") == 6
    assert grew("smartflow_overhead_seconds_bucket", le="+Inf") == 6
    assert grew("smartflow_cost_usd_total", **openai) == pytest.approx(4 * (10 * 2.0 + 5 * 8.0) / 1e6)
    # The gateway's own time is small next to the total (the fake upstream answers at once).
    assert 0 < grew("smartflow_overhead_seconds_sum") < 6 * 1.0


def test_the_histogram_is_cumulative(scrape, proxy_client):
    proxy_client.post("/v1/chat/completions", json=CHAT)
    s = scrape()
    buckets = [(sample.labels["le"], sample.value) for sample in s.families["smartflow_overhead_seconds"].samples
               if sample.name.endswith("_bucket")]
    assert [le for le, _ in buckets][-1] == "+Inf"
    values = [v for _, v in buckets]
    assert values == sorted(values) and values[-1] == s.value("smartflow_overhead_seconds_count")


def test_a_flood_of_unknown_model_names_does_not_create_series(scrape, proxy_client):
    for i in range(25):  # through the proxy: native openai names the tier table does not know
        proxy_client.post("/v1/chat/completions", json={**CHAT, "model": f"gpt-unknown-{i}"})
    # ... and many more straight into the counters, as a busy gateway would see them
    for i in range(5000):
        counters.observe({"provider": "openai", "upstream_model": f"ft:gpt-x:{i}", "client_model": f"ft:gpt-x:{i}",
                          "status_code": 200, "cache": "miss", "tokens_input": 1, "tokens_output": 1,
                          "overhead_ms": 1.0})
    counters.observe({"provider": "acme-ai", "upstream_model": "x", "status_code": 777, "overhead_ms": 1.0})
    s = scrape()
    series = s.series("smartflow_requests_total")
    models = {labels["model"] for labels in series}
    known = {entry["model"] for entry in _tier_models()}
    assert models <= known | {"other"}
    assert {labels["provider"] for labels in series} <= set(registry.PROVIDER_NAMES) | {"none"}
    assert {labels["status"] for labels in series} <= set(registry.STATUS_CLASSES)
    assert len(series) < 20
    assert s.value("smartflow_requests_total", model="other") >= 5025


def test_dated_variants_fold_into_the_tier_table_name(scrape):
    counters.observe({"provider": "anthropic", "upstream_model": "claude-haiku-4-5-20251001", "status_code": 200,
                      "overhead_ms": 1.0})
    counters.observe({"provider": "openai", "upstream_model": "gpt-4.1-2025-04-14", "status_code": 200,
                      "overhead_ms": 1.0})
    s = scrape()
    assert s.value("smartflow_requests_total", model="claude-haiku-4-5-20251001") == 1
    assert s.value("smartflow_requests_total", provider="openai", model="gpt-4.1") == 1


def test_cache_outcomes_count_as_hits_and_misses(scrape):
    for cache in ("hit", "hit", "miss", "bypass"):
        counters.observe({"provider": "openai", "upstream_model": "gpt-4.1", "status_code": 200, "cache": cache,
                          "overhead_ms": 0.5})
    s = scrape()
    assert s.value("smartflow_cache_hits_total") == 2
    assert s.value("smartflow_cache_misses_total") == 1


def test_the_cache_size_is_the_metacaches_own(scrape):
    import asyncio

    from django.core.cache import cache

    from proxy.cache import store

    store.current().clear()
    cache.set("metrics-test-blob", "x" * 50_000, 30)  # other cache use is not the MetaCache's size
    try:
        before = scrape()
        assert before.value("smartflow_cache_size_bytes") == 0 and before.value("smartflow_cache_entries") == 0
        asyncio.run(store.current().put("metrics-test", b"y" * 30_000, 30))
        after = scrape()
        assert after.value("smartflow_cache_size_bytes") == 30_000
        assert after.value("smartflow_cache_entries") == 1
    finally:
        cache.delete("metrics-test-blob")
        store.current().clear()


def _tier_models():
    import json

    from proxy.routing import TIERS_FILE

    return json.loads(TIERS_FILE.read_text())["models"]
