"""A Redis that accepts connections and never answers must not slow the trace writer down."""
import importlib.util
import socket
import threading
import time

import httpx
import pytest

from conftest import wait_for

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def hung_redis():
    """A listening socket that accepts and never replies (a wedged Redis, a black-holing proxy)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_hung_channel_layer_does_not_hold_up_the_trace_writer(gateway, proxy_client, settings, hung_redis):
    """Live pushes are best effort; each one used to wait out the layer's timeout (~5 s) in the
    writer thread, batch after batch, so at a few hundred requests a second traces fell behind
    without end and were dropped at the backlog bound."""
    from traces.models import VASLog

    settings.SMARTFLOW_TRACE_BATCH_SIZE = 5
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [hung_redis]}}}
    ids = []
    for _ in range(40):
        r = proxy_client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        ids.append(r.headers["x-smartflow-request-id"])
    wait_for(lambda: VASLog.objects.filter(id__in=ids).count() == len(ids), timeout=8)



def configured_caches(url, monkeypatch) -> dict:
    """CACHES as smartflow/settings.py builds them for REDIS_URL=url."""
    monkeypatch.setenv("REDIS_URL", url)
    spec = importlib.util.find_spec("smartflow.settings")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    return fresh.CACHES


def test_metrics_answer_while_redis_hangs(gateway, settings, monkeypatch, hung_redis):
    """The cache client had no socket timeout: a scrape (cache size, roll-up) waited as long as the
    socket did (for good, outside this sandbox's 5 s network guard)."""
    settings.REDIS_URL = hung_redis
    settings.CACHES = configured_caches(hung_redis, monkeypatch)
    r = httpx.get(gateway.management_url + "/metrics", timeout=10)  # Prometheus's default scrape timeout
    assert r.status_code == 200 and "smartflow_requests_total" in r.text
