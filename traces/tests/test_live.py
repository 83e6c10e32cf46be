"""/ws/traces: new trace rows pushed to signed-in dashboards through the channel layer."""
import json

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
