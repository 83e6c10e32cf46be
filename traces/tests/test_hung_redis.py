"""A Redis that accepts connections and never answers must not slow the trace writer down."""
import socket
import threading
import time

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
