"""The proxy served for real, against the fake provider server, with real clients."""
import httpx
import openai
import pytest

from conftest import MASTER_KEY, PROVIDER_KEYS
from tests.fake_upstream import COMPLETION_TOKENS, ECHO_PREFIX, PROMPT_TOKENS, anthropic_error, openai_error
from traces.models import VASLog

CHAT = {"model": "gpt-4.1", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "hello there"}]}


def log_of(gateway, response) -> VASLog:
    return gateway.log(response.headers["x-smartflow-request-id"])


@pytest.fixture
def sdk(gateway, virtual_key):
    return openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=virtual_key, max_retries=0)


@pytest.mark.parametrize("provider,upstream_model", [
    ("openai", "gpt-4.1"), ("anthropic", "claude-sonnet-4-6"),
    ("gemini", "gemini-2.5-flash"), ("ollama", "qwen2.5:14b"),
])
def test_it_serves_the_openai_sdk_from_every_provider(sdk, fake_upstream, provider, upstream_model):
    raw = sdk.chat.completions.with_raw_response.create(
        **CHAT, extra_headers={"x-smartflow-provider": provider})
    completion = raw.parse()
    assert completion.model == "gpt-4.1"  # the client's name is echoed
    assert completion.choices[0].message.content == ECHO_PREFIX + "hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert raw.headers["x-smartflow-provider"] == provider
    assert raw.headers["x-smartflow-model"] == upstream_model
    assert raw.headers["x-smartflow-cache"] == "BYPASS"
    assert float(raw.headers["x-smartflow-overhead-ms"]) >= 0
    sent = fake_upstream.last_request
    assert sent.provider == provider
    assert MASTER_KEY not in str(sent.headers) and "sk-sf-" not in str(sent.headers)


def test_cross_provider_routing_injects_the_serving_providers_key(proxy_client, fake_upstream, virtual_key):
    """Regression (the seed's bug): a client auth header must not stop cross-provider routing."""
    headers = {"Authorization": f"Bearer {virtual_key}"}
    r = proxy_client.post("/v1/chat/completions", json={**CHAT, "model": "claude-sonnet-4-6"},
                          headers={**headers, "x-smartflow-provider": "openai"})
    assert r.status_code == 200, r.text
    sent = fake_upstream.last_request
    assert sent.provider == "openai" and sent.json["model"] == "gpt-4.1"
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEYS['openai']}"

    r = proxy_client.post("/v1/chat/completions", json=CHAT,
                          headers={**headers, "x-smartflow-provider": "anthropic", "x-api-key": virtual_key})
    assert r.status_code == 200, r.text
    sent = fake_upstream.last_request
    assert sent.provider == "anthropic" and sent.json["model"] == "claude-sonnet-4-6"
    assert sent.headers["x-api-key"] == PROVIDER_KEYS["anthropic"]
    assert "authorization" not in sent.headers
    assert sent.json["system"] == "Be brief." and sent.json["max_tokens"] == 4096


@pytest.mark.parametrize("model", ["gpt-5.4", "o3", "o4-mini"])
def test_reasoning_models_get_max_completion_tokens_and_lose_temperature(gateway, proxy_client, fake_upstream, model):
    r = proxy_client.post("/v1/chat/completions", json={**CHAT, "model": model, "max_tokens": 50,
                                                         "temperature": 0.2})
    assert r.status_code == 200, r.text
    body = fake_upstream.last_request.json
    assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
    assert "temperature" not in body
    dropped = log_of(gateway, r).routing["dropped_params"]
    assert any("temperature" in d for d in dropped)


def test_gpt_4_models_get_max_tokens(proxy_client, fake_upstream):
    r = proxy_client.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 70, "temperature": 0.2})
    assert r.status_code == 200, r.text
    body = fake_upstream.last_request.json
    assert body["max_tokens"] == 70 and "max_completion_tokens" not in body
    assert body["temperature"] == 0.2


def test_an_unknown_cross_provider_model_goes_to_the_inferred_tier(gateway, proxy_client, fake_upstream):
    r = proxy_client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-7-mini"},
                          headers={"x-smartflow-provider": "anthropic"})
    assert r.status_code == 200, r.text
    assert fake_upstream.last_request.json["model"] == "claude-haiku-4-5-20251001"
    routing = log_of(gateway, r).routing
    assert routing["tier_inferred"] is True and routing["override"] == "anthropic"


def test_every_request_leaves_one_complete_vaslog(gateway, proxy_client, management_client):
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    log_id = r.headers["x-smartflow-request-id"]
    detail = management_client.get(f"/api/vas/logs/{log_id}")  # resolves before the batch is written
    assert detail.status_code == 200 and detail.json()["success"] is True
    log = log_of(gateway, r)
    assert VASLog.objects.filter(pk=log_id).count() == 1
    assert [s["name"] for s in log.stages] == ["auth", "routing", "translation", "upstream_ttfb",
                                               "upstream_total", "response_translation"]
    assert all(s["ms"] >= 0 for s in log.stages)
    assert log.tokens_input == PROMPT_TOKENS and log.tokens_output == COMPLETION_TOKENS
    assert float(log.cost_usd) == pytest.approx((10 * 2.0 + 5 * 8.0) / 1e6)
    assert log.prompt[1]["content"] == "hello there"
    assert log.response["choices"][0]["message"]["content"] == ECHO_PREFIX + "hello there"
    data = management_client.get(f"/api/vas/logs/{log_id}").json()["data"]
    assert data["key"] == MASTER_KEY[:12] and data["provider"] == "openai" and data["status_code"] == 200
    assert PROVIDER_KEYS["openai"] not in str(data)


def test_an_unknown_log_id_is_a_404_in_the_contract_shape(management_client):
    r = management_client.get("/api/vas/logs/nope")
    assert r.status_code == 404 and r.json()["success"] is False


def test_the_log_api_needs_auth(gateway, virtual_key):
    r = httpx.get(gateway.management_url + "/api/vas/logs/x")
    assert r.status_code in (401, 403)
    r = httpx.get(gateway.management_url + "/api/vas/logs/x", headers={"Authorization": f"Bearer {virtual_key}"})
    assert r.status_code in (401, 403)  # a non-admin key is not enough


@pytest.mark.parametrize("content,headers,status,code", [
    (b"{nope", {}, 400, "invalid_json"),
    (b"[]", {}, 400, "invalid_json"),
    (b'{"model":"gpt-4.1"}', {}, 400, None),
    (b'{"model":"gpt-4.1","messages":[]}', {}, 400, None),
    (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"x"}],"temperature":"hot"}', {}, 400, None),
    (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"x"}]}', {"x-smartflow-provider": "azure"},
     400, "unknown_provider"),
    (b'{"model":"mystery-model","messages":[{"role":"user","content":"x"}]}', {}, 404, "model_not_found"),
    (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"x"}]}', {"Authorization": "Bearer sk-sf-wrong"},
     401, "invalid_api_key"),
    (b'{"model":"gpt-4.1","messages":[{"role":"user","content":"x"}]}', {"Authorization": "Bearer sk-openai-real"},
     401, "invalid_api_key"),
])
def test_bad_requests_get_openai_errors_and_a_vaslog(gateway, proxy_client, fake_upstream, content, headers,
                                                     status, code):
    r = proxy_client.post("/v1/chat/completions", content=content, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code:
        assert error["code"] == code
    assert log_of(gateway, r).status_code == status
    assert fake_upstream.requests == []  # nothing reached a provider


def test_a_missing_key_is_a_401(gateway):
    r = httpx.post(gateway.proxy_url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and "Authorization" in r.json()["error"]["message"]


def test_a_body_over_the_limit_is_a_413(gateway, proxy_client, settings):
    settings.SMARTFLOW_MAX_BODY_BYTES = 1000
    r = proxy_client.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert log_of(gateway, r).status_code == 413


def test_a_model_the_team_may_not_use_is_a_403(gateway, fake_upstream, team, virtual_key):
    team.allowed_models = ["gpt-4.1-mini"]
    team.save()
    client = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=virtual_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(**CHAT)
    assert "gpt-4.1-mini" in str(err.value)
    assert client.chat.completions.create(**{**CHAT, "model": "gpt-4.1-mini"}).model == "gpt-4.1-mini"
    listed = [m.id for m in client.models.list()]
    assert listed == ["gpt-4.1-mini"]


@pytest.mark.parametrize("provider,status,body,headers,expect_status,expect_code", [
    ("openai", 429, openai_error(429, "Rate limit reached", "requests", "rate_limit_exceeded"),
     {"retry-after": "7"}, 429, "rate_limit_exceeded"),
    ("anthropic", 529, anthropic_error("overloaded_error", "Overloaded"), {}, 502, "upstream_overloaded"),
    ("anthropic", 401, anthropic_error("authentication_error", "invalid x-api-key"), {}, 502, "upstream_auth_error"),
    ("openai", 500, openai_error(500, "boom", "server_error", None), {}, 502, "upstream_error"),
    ("openai", 404, openai_error(404, "The model does not exist", "invalid_request_error", "model_not_found"),
     {}, 404, "model_not_found"),
    ("openai", 400, openai_error(400, "context too long", "invalid_request_error", "context_length_exceeded"),
     {}, 400, "context_length_exceeded"),
])
def test_upstream_errors_are_mapped(gateway, proxy_client, fake_upstream, provider, status, body, headers,
                                    expect_status, expect_code):
    fake_upstream.script(provider=provider, status=status, body=body, headers=headers)
    r = proxy_client.post("/v1/chat/completions", json=CHAT, headers={"x-smartflow-provider": provider})
    assert r.status_code == expect_status, r.text
    error = r.json()["error"]
    assert error["code"] == expect_code and provider in error["message"]
    if headers.get("retry-after"):
        assert r.headers["retry-after"] == "7"
    log = log_of(gateway, r)
    assert log.status_code == expect_status and log.error


def test_a_hanging_upstream_is_a_504_not_a_hang(gateway, proxy_client, fake_upstream, settings):
    settings.SMARTFLOW_UPSTREAM_TIMEOUT = 0.5
    fake_upstream.script(provider="openai", hang=True)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert log_of(gateway, r).status_code == 504


def test_a_down_upstream_is_a_502(gateway, proxy_client, settings):
    from conftest import free_port

    settings.SMARTFLOW_BASE_URLS = {**settings.SMARTFLOW_BASE_URLS, "openai": f"http://127.0.0.1:{free_port()}/v1"}
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    assert "SMARTFLOW_OPENAI_BASE_URL" in r.json()["error"]["message"]


def test_the_port_decides_which_urls_exist(gateway, master_key):
    auth = {"Authorization": f"Bearer {master_key}"}
    assert httpx.post(gateway.management_url + "/v1/chat/completions", json=CHAT, headers=auth).status_code == 404
    assert httpx.get(gateway.proxy_url + "/admin/").status_code == 404
    assert httpx.get(gateway.proxy_url + "/api/vas/logs/x", headers=auth).status_code == 404
    assert httpx.get(gateway.management_url + "/health").status_code == 404


def test_health_reports_database_and_cache(gateway):
    body = httpx.get(gateway.proxy_url + "/health").json()
    assert body["status"] == "ok" and body["database"]["ok"] and body["cache"]["ok"]


def test_an_internal_failure_is_a_clean_500_with_a_vaslog(gateway, proxy_client, fake_upstream, monkeypatch):
    from proxy.formats import OPENAI

    def broken(response, client_model):
        raise KeyError("a translation bug")

    monkeypatch.setattr(OPENAI, "respond", broken)
    r = proxy_client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "internal_error" and r.headers["x-smartflow-request-id"] in error["message"]
    assert "Traceback" not in r.text and "translation bug" not in r.text
    log = gateway.log(r.headers["x-smartflow-request-id"])
    assert log.status_code == 500 and "translation bug" in log.error
