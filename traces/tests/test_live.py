"""/ws/traces: new trace rows pushed to signed-in dashboards through the channel layer."""
import json

from conftest import wait_for

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "live please"}]}


def ws_url(gateway) -> str:
    return gateway.management_url.replace("http://", "ws://") + "/ws/traces"


def test_it_pushes_each_finished_request_to_signed_in_dashboards(gateway, proxy_client, session_cookie):
    from django.conf import settings

    cookie = f"{settings.SESSION_COOKIE_NAME}={session_cookie}"
    with connect(ws_url(gateway), additional_headers={"Cookie": cookie}, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        r = proxy_client.post("/v1/chat/completions", json=CHAT)
        request_id = r.headers["x-smartflow-request-id"]
        rows = []
        while request_id not in [row["id"] for row in rows]:
            message = json.loads(ws.recv(timeout=10))
            assert message["type"] == "rows"
            rows += message["rows"]
    row = next(row for row in rows if row["id"] == request_id)
    assert row["provider"] == "openai" and row["tokens_input"] == 10 and row["status_code"] == 200
    assert "prompt" not in row  # summaries only


def test_it_refuses_anonymous_and_cross_site_sockets(gateway, session_cookie):
    from django.conf import settings

    with pytest.raises(InvalidStatus):
        connect(ws_url(gateway), open_timeout=10)
    cookie = f"{settings.SESSION_COOKIE_NAME}={session_cookie}"
    with pytest.raises(InvalidStatus):
        connect(ws_url(gateway), additional_headers={"Cookie": cookie}, origin="http://evil.example", open_timeout=10)


def test_it_is_not_on_the_proxy_port(gateway, session_cookie):
    url = gateway.proxy_url.replace("http://", "ws://") + "/ws/traces"
    with pytest.raises(InvalidStatus):
        connect(url, open_timeout=10)


def test_pushes_without_a_dashboard_here_reach_other_processes_on_one_redis_connection(redis_server, settings):
    """A process with no dashboard of its own (a worker behind a load balancer) pushes each batch
    through Redis to the dashboards of the others. Each push used to run on a new event loop
    (async_to_sync), so the layer opened a new connection for every batch: ~4 ms of the writer's CPU,
    five times a second."""
    import asyncio
    import threading
    from datetime import datetime, timezone

    import redis
    from channels.layers import channel_layers

    from traces import live

    _, url = redis_server()
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [url], "prefix": "live-test"}}}
    channel_layers.backends.clear()  # (the layer is made once per configuration)
    received, ready = [], threading.Event()

    def other_process_dashboard():  # a consumer of another process: its own loop and layer
        from channels_redis.core import RedisChannelLayer

        async def listen():
            layer = RedisChannelLayer(hosts=[url], prefix="live-test")
            channel = await layer.new_channel()
            await layer.group_add(live.GROUP, channel)
            ready.set()
            while len(received) < 20:
                received.append(await layer.receive(channel))
        asyncio.run(listen())

    listener = threading.Thread(target=other_process_dashboard, daemon=True)
    listener.start()
    assert ready.wait(10)
    connections = lambda: redis.Redis.from_url(url).info("stats")["total_connections_received"]  # noqa: E731
    before = connections()
    try:
        for n in range(20):
            record = {"id": f"live{n:04d}", "timestamp": datetime.now(timezone.utc), "status_code": 200,
                      "provider": "openai", "team": "a"}
            live.broadcast([record])
            wait_for(lambda: live._push.done(), timeout=10)
        listener.join(10)
        assert [m["rows"][0]["id"] for m in received] == [f"live{n:04d}" for n in range(20)]
        assert connections() - before <= 3  # the pushes' loop's connection (+ this test's own INFO calls)
    finally:
        channel_layers.backends.clear()


def test_pushes_go_on_if_their_loop_ever_stops(monkeypatch):
    """The pushes' own loop stopping (a BaseException out of it) must not leave the last push
    pending for good, which would drop every later one without a word."""
    import asyncio
    from datetime import datetime, timezone

    from traces import live

    sent = []

    class Layer:
        async def group_send(self, group, message):
            sent.append(message["rows"][0]["id"])

    monkeypatch.setattr(live, "get_channel_layer", lambda: Layer())
    monkeypatch.setattr(live, "_loop", None)

    def push(n):
        live.broadcast([{"id": f"p{n}", "timestamp": datetime.now(timezone.utc), "status_code": 200}])

    push(1)
    wait_for(lambda: sent == ["p1"])
    stuck = asyncio.Event()
    loop, thread = live._own_loop, live._own_thread
    live._push = asyncio.run_coroutine_threadsafe(stuck.wait(), loop)  # a push that never completes
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    push(2)
    wait_for(lambda: sent == ["p1", "p2"])
    assert live._own_thread is not thread and live._own_thread.is_alive()
    for task in asyncio.all_tasks(loop):  # the stuck push, on the stopped loop: ended, not left to the GC
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
