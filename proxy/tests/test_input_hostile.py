"""What a hostile client sends: odd model names, wrong types, deep nesting, across the real wire."""
import logging

import aiohttp
import httpx
import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from conftest import PROVIDER_KEYS
from proxy import upstream
from proxy.keystore import provider_keys
from proxy.providers.base import MAX_DEPTH
from traces.models import VASLog, as_dict

USER = [{"role": "user", "content": "hi"}]
ENDPOINTS = {
    "openai": ("/v1/chat/completions", {"messages": USER}),
    "anthropic": ("/v1/messages", {"max_tokens": 10, "messages": USER}),
}


def post(client, endpoint, body=None, content=None, **kwargs):
    path, _ = ENDPOINTS[endpoint]
    return client.post(path, json=body, content=content, **kwargs)


def assert_error_shape(endpoint, r, status=400, param=None):
    assert r.status_code == status, r.text
    body = r.json()
    if endpoint == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
        if param is not None:
            assert body["error"]["param"] == param
    else:
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"]
        if param is not None:
            assert param in body["error"]["message"]
    return body


def stored_log(gateway, r) -> VASLog:
    """The request's one VASLog, read back from the database (so every field was storable)."""
    log = gateway.log(r.headers["x-smartflow-request-id"])
    assert VASLog.objects.filter(pk=log.pk).count() == 1
    orjson.dumps(as_dict(log))
    return log


# --- model names ------------------------------------------------------------------

BAD_MODELS = [
    "gemini/../../v1beta/cachedContents?x=",  # would POST to another Gemini endpoint with the operator's key
    "gemini/gemini-2.5-flash/../../cachedContents",
    "gpt-4.1\r\nx-injected: 1",  # echoed into x-smartflow-model, it killed the connection
    "gpt-4.1\n",
    "claude-sonnet-4-6\x00",
    "gemini-2.5-flash:generateContent?key=x",
    "gemini-2.5-flash#frag",
    "gemini%2F..%2Fx",
    "gpt 4.1",
    "ollama//llama3.3",
    "llama3.3/",
    "./llama3.3",
    "-rf",
    "a" * 201,
    "gpt-4.1\u2028",
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("model", BAD_MODELS)
def test_it_refuses_model_names_that_are_not_names(gateway, proxy_client, fake_upstream, endpoint, model):
    _, body = ENDPOINTS[endpoint]
    r = post(proxy_client, endpoint, {**body, "model": model}, headers={"x-smartflow-provider": "gemini"})
    assert_error_shape(endpoint, r, param="model")
    assert fake_upstream.requests == []
    assert "x-smartflow-model" not in r.headers
    log = stored_log(gateway, r)
    assert log.status_code == 400 and log.client_model == "" and log.endpoint in ("chat.completions", "messages")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("model", ["qwen2.5:14b", "anthropic/claude-sonnet-4-6", "gemini-2.5-flash",
                                   "ollama/meta-llama/Llama-3.3-70B", "ollama/hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M",
                                   "ollama/llama3.3@sha256-abc", "ollama/phi4+custom", "gpt-4.1"])
def test_real_model_names_still_pass(gateway, proxy_client, fake_upstream, endpoint, model):
    _, body = ENDPOINTS[endpoint]
    r = post(proxy_client, endpoint, {**body, "model": model})
    assert r.status_code == 200, r.text
    prefix, _, rest = model.partition("/")
    assert r.headers["x-smartflow-model"] == (rest if prefix in ("ollama", "anthropic") else model)
    sent = fake_upstream.last_request
    assert r.headers["x-smartflow-model"] in (sent.json.get("model"), sent.path.split("/")[-1].split(":")[0])


# --- wrong types ------------------------------------------------------------------------

WRONG_TYPES = {
    "openai": [
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": {"name": "user"}, "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": 5, "text": "x"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": ["text"], "text": "x"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ["x"]}]}]},
         "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 7}}]}]},
         "messages[0].content[0].image_url.url"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": "x"}]}]},
         "messages[0].content[0].input_audio"),
        ({"messages": USER, "reasoning_effort": ["high"]}, "reasoning_effort"),
        ({"messages": USER, "tools": [{"type": "function", "function": "f"}]}, "tools[0].function"),
        ({"messages": USER + [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f",
                                                                                          "arguments": {}}}]}]},
         "messages[1].tool_calls[0].function.arguments"),
        ({"messages": USER, "tool_choice": {"type": "allowed_tools",
                                            "allowed_tools": {"tools": [{"name": ["f"]}]}}},
         "tool_choice.allowed_tools.tools[0].name"),
    ],
    "anthropic": [
        ({"max_tokens": 10, "messages": [{"role": ["user"], "content": "x"}]}, "messages.0.role"),
        ({"max_tokens": 10, "messages": [{"role": {"r": 1}, "content": "x"}]}, "messages.0.role"),
        ({"max_tokens": 10, "messages": [{"role": "user", "content": [{"type": 1, "text": "x"}]}]},
         "messages.0.content"),
        ({"max_tokens": 10, "system": [{"type": "text", "text": 5}], "messages": USER}, "system"),
        ({"max_tokens": 10, "messages": USER, "stream": "yes"}, "stream"),
        ({"max_tokens": 10, "messages": USER, "tools": [{"name": "t", "input_schema": "{}"}]},
         "tools.0.input_schema"),
    ],
}


@pytest.mark.parametrize("endpoint,body,param", [(e, b, p) for e, cases in WRONG_TYPES.items() for b, p in cases])
@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_wrong_types_are_a_400_never_forwarded(gateway, proxy_client, fake_upstream, endpoint, body, param, provider):
    model = "gpt-4.1" if endpoint == "openai" else "claude-sonnet-4-6"
    r = post(proxy_client, endpoint, {"model": model, **body}, headers={"x-smartflow-provider": provider})
    assert_error_shape(endpoint, r, param=param)
    assert fake_upstream.requests == []
    assert stored_log(gateway, r).status_code == 400


def nested(depth: int):
    value = "bottom"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("depth", [300, 1000, 5000])
def test_deeply_nested_values_are_a_400(gateway, proxy_client, fake_upstream, endpoint, depth):
    """Regression: 1,000 levels in metadata parsed (orjson reads 1,024) but could not be written
    again (orjson writes 254): the native path's upstream call raised, a 500."""
    _, body = ENDPOINTS[endpoint]
    model = "gpt-4.1" if endpoint == "openai" else "claude-sonnet-4-6"
    r = post(proxy_client, endpoint, content=orjson.dumps({**body, "model": model, "metadata": nested(1)})
             .replace(b'{"a":"bottom"}', b'{"a":' * depth + b'"bottom"' + b"}" * depth),
             headers={"content-type": "application/json"})
    assert_error_shape(endpoint, r)
    assert fake_upstream.requests == []
    assert stored_log(gateway, r).status_code == 400


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "ollama"])
@pytest.mark.parametrize("depth", [300, 5000])
def test_deeply_nested_tool_arguments_are_a_400(gateway, proxy_client, fake_upstream, provider, depth):
    """Regression: arguments (a JSON string) parsed into an object too deep to send (a 500),
    or past Python's recursion limit (RecursionError, a 500)."""
    arguments = '{"a":' * depth + "1" + "}" * depth
    messages = USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    r = post(proxy_client, "openai", {"model": "gpt-4.1", "messages": messages},
             headers={"x-smartflow-provider": provider})
    if depth > 1024:  # past what any parser here reads: not JSON, sent as {} (PROVIDERS.md §6.2)
        assert r.status_code == 200, r.text
        return
    assert_error_shape("openai", r)
    assert "arguments" in r.json()["error"]["message"] and fake_upstream.requests == []
    assert stored_log(gateway, r).status_code == 400


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_nesting_up_to_the_limit_is_served_and_traced(gateway, proxy_client, fake_upstream, endpoint):
    _, body = ENDPOINTS[endpoint]
    model = "gpt-4.1" if endpoint == "openai" else "claude-sonnet-4-6"
    # the part sits at depth 4 (body, messages, message, content list): what fits below is the limit
    deep = {"type": "text", "text": "deep", "extra": nested(MAX_DEPTH - 5)}
    r = post(proxy_client, endpoint, {**body, "model": model, "messages": [{"role": "user", "content": [deep]}]})
    assert r.status_code == 200, r.text
    assert fake_upstream.last_request.json is not None
    assert stored_log(gateway, r).status_code == 200


# --- provider keys never leak -------------------------------------------------------------

@pytest.fixture
def set_provider_key(gateway):
    from django.conf import settings

    saved = dict(settings.SMARTFLOW_PROVIDER_KEYS)

    def set_key(provider, key):
        settings.SMARTFLOW_PROVIDER_KEYS[provider] = key
        provider_keys.invalidate()
        provider_keys.get_sync()  # loaded now: the gateway's next request uses it
    yield set_key
    settings.SMARTFLOW_PROVIDER_KEYS.clear()
    settings.SMARTFLOW_PROVIDER_KEYS.update(saved)
    provider_keys.invalidate()
    provider_keys.get_sync()


@pytest.mark.parametrize("endpoint,provider,key", [
    ("openai", "anthropic", PROVIDER_KEYS["anthropic"]),  # key-shaped (sk-...)
    ("anthropic", "openai", "plain-operator-secret-0042"),  # known only because the key store holds it
    ("anthropic", "anthropic", PROVIDER_KEYS["anthropic"]),  # the native path
])
def test_an_unexpected_upstream_error_never_shows_the_provider_key(gateway, proxy_client, fake_upstream, monkeypatch,
                                                                    caplog, set_provider_key, endpoint, provider, key):
    """Regression: the trace kept repr(err) of an aiohttp error, whose request headers carry x-api-key."""
    set_provider_key(provider, key)

    async def failing_post(self, url, headers, body, gate=None):
        info = aiohttp.RequestInfo(URL(url), "POST", CIMultiDictProxy(CIMultiDict(headers)), URL(url))
        raise aiohttp.ClientResponseError(info, (), status=500, message=f"bad auth header {headers}")

    monkeypatch.setattr(upstream.UpstreamClient, "post_json", failing_post)
    _, body = ENDPOINTS[endpoint]
    model = "claude-sonnet-4-6" if provider == "anthropic" else "gpt-4.1"
    with caplog.at_level(logging.INFO):
        r = post(proxy_client, endpoint, {**body, "model": model}, headers={"x-smartflow-provider": provider})
        log = stored_log(gateway, r)
    assert r.status_code == 500 and key not in r.text and r.headers["x-smartflow-request-id"] in r.text
    assert key not in str(as_dict(log)) and key not in str(orjson.dumps(as_dict(log)))
    assert log.error.startswith("ClientResponseError: ") and "[redacted]" in log.error
    records = [rec for rec in caplog.records if rec.name == "proxy.views"]
    assert records and "ClientResponseError" in caplog.text
    assert key not in caplog.text
    assert all(key not in rec.getMessage() and key not in (rec.exc_text or "") and rec.exc_info is None
               for rec in caplog.records)


def test_a_body_that_never_arrives_is_a_408_with_its_trace(gateway, master_key, settings):
    """A client that sends headers and then trickles, or nothing, held its connection (and a
    task) for good and left no trace until it went away: slow-body clients pile up unseen."""
    import socket
    import time
    from urllib.parse import urlsplit

    from conftest import wait_for

    settings.SMARTFLOW_BODY_TIMEOUT_SECONDS = 0.5
    url = urlsplit(gateway.proxy_url)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {master_key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": \"gpt-4.1\",")
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        before = VASLog.objects.count()
        began = time.monotonic()
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert time.monotonic() - began < 3
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 408 " in status_line, answer
    error = orjson.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    wait_for(lambda: VASLog.objects.count() == before + 1)
    assert VASLog.objects.order_by("-timestamp").first().status_code == 408
