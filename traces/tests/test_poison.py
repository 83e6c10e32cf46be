"""Across the wire: what a client (or a provider) sends cannot stop traces being written."""
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import wait_for
from metrics.tests.conftest import Scrape
from traces.models import VASLog

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}


def nul_error_body():
    return {"error": {"message": "upstream \u0000 broke", "type": "server_error", "param": None, "code": None}}


def test_nul_in_prompt_response_and_upstream_error_is_stored(gateway, proxy_client, fake_upstream):
    r = proxy_client.post("/v1/chat/completions",
                          json={**CHAT, "messages": [{"role": "user", "content": "pdf \u0000 text"}]})
    assert r.status_code == 200
    log = gateway.log(r.headers["x-smartflow-request-id"])
    assert log.prompt[0]["content"] == "pdf \ufffd text"
    assert "\ufffd" in str(log.response) and "\x00" not in str(log.response)
    assert "NUL characters in prompt replaced" in log.error and log.status_code == 200

    fake_upstream.script("openai", status=500, body=nul_error_body())
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502
    log = gateway.log(r.headers["x-smartflow-request-id"])
    assert "\x00" not in log.error and "NUL characters in error replaced" in log.error


@pytest.mark.parametrize("model", ["m" * 10_000, "gpt-4.1\u0000", "\u0000" * 300])
def test_a_hostile_model_name_leaves_exactly_one_vaslog(gateway, proxy_client, model):
    try:
        proxy_client.post("/v1/chat/completions", json={**CHAT, "model": model})
    except httpx.RemoteProtocolError:
        pass  # what the client gets is the proxy's business; here, only that the trace is kept
    wait_for(lambda: gateway.flush_traces() or VASLog.objects.exists())
    (log,) = VASLog.objects.all()
    assert len(log.client_model) <= 200 and "\x00" not in log.client_model + log.upstream_model + log.error


def test_a_burst_with_one_poisonous_request_in_a_hundred_leaves_one_vaslog_each(gateway, master_key, fake_upstream):
    fake_upstream.script("openai", status=500, body=nul_error_body(), times=3)

    client = httpx.Client(base_url=gateway.proxy_url, timeout=30, headers={"Authorization": f"Bearer {master_key}"},
                          limits=httpx.Limits(max_connections=8))

    def send(i: int) -> str:
        text = f"page {i} \u0000 extracted" if i % 100 == 7 else f"question {i}"
        r = client.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": text}]})
        assert r.status_code in (200, 502)
        return r.headers["x-smartflow-request-id"]

    with client, ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(send, range(1000)))
    assert len(set(ids)) == 1000
    gateway.flush_traces()
    assert VASLog.objects.count() == 1000
    assert set(VASLog.objects.values_list("id", flat=True)) == set(ids)
    assert VASLog.objects.filter(error__contains="NUL characters in prompt replaced").count() == 10
    assert VASLog.objects.filter(status_code=502).count() == 3

    health = httpx.get(gateway.proxy_url + "/health").json()
    assert health["status"] == "ok" and health["traces"]["backlog"] == 0
    assert health["traces"]["dropped"] == 0 and health["traces"]["last_failure"] is None


def test_a_database_that_refuses_writes_shows_in_health_and_metrics(gateway, proxy_client, monkeypatch):
    from django.db import OperationalError

    from traces import recorder as recorder_module

    def down(batch):
        raise OperationalError("the database is unreachable")

    before = Scrape(httpx.get(gateway.management_url + "/metrics"))
    monkeypatch.setattr(recorder_module, "write_batch", down)
    ids = [proxy_client.post("/v1/chat/completions", json=CHAT).headers["x-smartflow-request-id"]
           for _ in range(5)]
    recorder_module.recorder.flush_sync()
    health = httpx.get(gateway.proxy_url + "/health")
    body = health.json()
    # Proxying goes on while traces wait: degraded, not down.
    assert health.status_code == 200 and body["status"] == "degraded" and body["degraded"] == ["traces"]
    assert body["traces"]["backlog"] >= 5 and body["traces"]["backlog_bytes"] > 0
    assert body["traces"]["write_failures"] >= 1 and body["traces"]["last_failure"] == "OperationalError"
    after = Scrape(httpx.get(gateway.management_url + "/metrics"))
    assert after.value("smartflow_trace_backlog") >= 5 and after.value("smartflow_trace_backlog_bytes") > 0
    assert after.value("smartflow_trace_write_failures_total") > before.value("smartflow_trace_write_failures_total")
    assert "\nsmartflow_traces_dropped_total " in after.text  # a zero is shown, not left out
    for name, kind in (("smartflow_trace_backlog", "gauge"), ("smartflow_trace_backlog_bytes", "gauge"),
                       ("smartflow_trace_write_failures_total", "counter"),
                       ("smartflow_traces_dropped_total", "counter")):
        assert f"# HELP {name} " in after.text and f"# TYPE {name} {kind}\n" in after.text

    monkeypatch.undo()
    gateway.flush_traces()
    assert VASLog.objects.filter(pk__in=ids).count() == 5
    body = httpx.get(gateway.proxy_url + "/health").json()
    assert body["status"] == "ok" and body["traces"]["backlog"] == 0


@pytest.mark.django_db(transaction=True)
def test_the_writer_drops_past_its_bounds_and_counts_it(gateway, proxy_client, settings):
    settings.SMARTFLOW_TRACE_BACKLOG_MAX = 3
    from traces.recorder import recorder

    gateway.flush_traces()
    dropped = recorder.dropped
    with recorder._flushing:  # the writer is busy (a slow database): requests pile up
        for _ in range(6):
            assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 200
        wait_for(lambda: recorder.dropped - dropped == 3)  # the last trace is added just after its answer
        assert len(recorder.pending) == 3
    gateway.flush_traces()
    scrape = Scrape(httpx.get(gateway.management_url + "/metrics"))
    assert scrape.value("smartflow_traces_dropped_total") >= 3
    assert httpx.get(gateway.proxy_url + "/health").json()["traces"]["dropped"] >= 3
