"""A team's allowed_models limits the model actually called upstream, whatever name or header the client sends."""
import anthropic
import openai
import pytest

from tests.fake_upstream import ECHO_PREFIX

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def llama_only(team):
    team.allowed_models = ["llama3.3"]
    team.save()
    return team


@pytest.fixture
def sdk(gateway, llama_only, virtual_key):
    return openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=virtual_key, max_retries=0)


@pytest.fixture
def claude(gateway, llama_only, virtual_key):
    return anthropic.Anthropic(base_url=gateway.proxy_url, api_key=virtual_key, max_retries=0)


def refused_log(gateway, response):
    log = gateway.log(response.headers["x-smartflow-request-id"])
    assert log.status_code == 403 and log.team == "research" and "not allowed" in log.error
    return log


@pytest.mark.parametrize("model,headers,served", [
    ("llama3.3", {"x-smartflow-provider": "openai"}, "openai/gpt-5.4"),  # the override translates the tier
    ("openai/llama3.3", {}, "openai/gpt-5.4"),  # provider/model names the provider too
    ("openai/gpt-5.4", {}, "openai/gpt-5.4"),
    ("gpt-5.4", {"x-smartflow-provider": "ollama"}, None),  # tier-translated to llama3.3, which is allowed
])
def test_it_checks_the_model_the_upstream_would_be_called_with(gateway, sdk, fake_upstream, model, headers, served):
    raw = sdk.chat.completions.with_raw_response
    if served is None:
        response = raw.create(model=model, messages=HELLO, extra_headers=headers)
        assert response.headers["x-smartflow-model"] == "llama3.3"
        assert response.parse().choices[0].message.content == ECHO_PREFIX + "hello"
        assert [r.provider for r in fake_upstream.requests] == ["ollama"]
        return
    with pytest.raises(openai.PermissionDeniedError) as err:
        raw.create(model=model, messages=HELLO, extra_headers=headers)
    error = err.value.body
    assert err.value.status_code == 403 and error["code"] == "model_not_allowed" and error["param"] == "model"
    assert served in error["message"] and "llama3.3" in error["message"]
    assert fake_upstream.requests == []  # refused before any provider is called
    log = refused_log(gateway, err.value.response)
    assert log.upstream_model == served.partition("/")[2]


def test_the_allowed_model_is_still_served_by_name_and_prefix(gateway, sdk, fake_upstream):
    for model in ("llama3.3", "ollama/llama3.3"):
        response = sdk.chat.completions.with_raw_response.create(model=model, messages=HELLO)
        assert response.headers["x-smartflow-provider"] == "ollama"
        assert response.parse().model == model
    assert len(fake_upstream.requests_for("ollama")) == 2


def test_it_refuses_on_v1_messages_in_anthropic_format(gateway, claude, fake_upstream):
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        claude.messages.create(model="llama3.3", max_tokens=50, messages=HELLO,
                               extra_headers={"x-smartflow-provider": "openai"})
    assert err.value.status_code == 403
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "permission_error"
    assert "gpt-5.4" in err.value.body["error"]["message"]
    assert fake_upstream.requests == []
    assert refused_log(gateway, err.value.response).endpoint == "messages"


def test_it_refuses_a_stream_before_it_starts(gateway, sdk, fake_upstream):
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="llama3.3", messages=HELLO, stream=True,
                                    extra_headers={"x-smartflow-provider": "gemini"})
    assert fake_upstream.requests == []


def test_models_lists_what_the_key_is_served(gateway, team, virtual_key):
    client = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=virtual_key, max_retries=0)
    # mistral-small is not in the tier table but routes to Ollama by its name; no provider claims the last.
    team.allowed_models = ["llama3.3", "mistral-small", "claude-sonnet-4-6", "openai/gpt-4.1", "not-a-known-model"]
    team.save()
    listed = {m.id: m.owned_by for m in client.models.list()}
    assert listed == {"claude-sonnet-4-6": "anthropic", "llama3.3": "ollama", "mistral-small": "ollama"}
    for name in listed:
        assert client.chat.completions.create(model=name, messages=HELLO).model == name


def test_models_lists_the_whole_table_for_an_unrestricted_key(gateway, virtual_key, master_key):
    from proxy import routing

    table = routing.load_table()
    for key in (virtual_key, master_key):
        client = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=key, max_retries=0)
        listed = {m.id: m.owned_by for m in client.models.list()}
        assert listed == {name: entry.provider for name, entry in table.entries.items()}
