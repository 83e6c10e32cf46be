"""Anthropic clients served by Anthropic pass through: what Anthropic accepts is not refused by the
gateway's translator. Routed to another provider, the same request is refused naming the construct."""
import json

import anthropic
import httpx
import httpx2
import pytest

USER_TEXT = {"role": "user", "content": "look this up"}
CONSTRUCTS = {
    "web_search": ({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]},
                   ["web_search_20250305", "Anthropic server tool"]),
    "code_execution": ({"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
                       ["code_execution_20250825", "Anthropic server tool"]),
    "bash": ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, ["bash_20250124", "Anthropic-defined tool"]),
    "text_editor": ({"tools": [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]},
                    ["text_editor_20250728", "Anthropic-defined tool"]),
    "computer": ({"tools": [{"type": "computer_20250124", "name": "computer", "display_width_px": 1024,
                             "display_height_px": 768}]}, ["computer_20250124", "Anthropic-defined tool"]),
    "document_url": ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://example.com/report.pdf"}},
        {"type": "text", "text": "summarise"}]}]}, ["documents", "url and file sources"]),
    "document_file": ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "file", "file_id": "file_011CNha8iCJcU1wXNR6q4V8w"}},
        {"type": "text", "text": "summarise"}]}]}, ["documents", "url and file sources"]),
    "search_result": ({"messages": [{"role": "user", "content": [
        {"type": "search_result", "source": "https://example.com/wiki", "title": "Wiki",
         "content": [{"type": "text", "text": "Paris is the capital."}], "citations": {"enabled": True}},
        {"type": "text", "text": "what is the capital?"}]}]}, ["'search_result'"]),
    "max_tokens_zero": ({"max_tokens": 0}, ["max_tokens"]),
}


@pytest.fixture
def sent_by_sdk():
    return []


@pytest.fixture
def claude(gateway, virtual_key, sent_by_sdk):
    """The anthropic SDK (on httpx2), keeping the exact bodies it put on the wire."""
    def keep(request: httpx2.Request):
        sent_by_sdk.append(json.loads(request.content))
    http = httpx2.Client(event_hooks={"request": [keep]}, timeout=30)
    yield anthropic.Anthropic(base_url=gateway.proxy_url, api_key=virtual_key, max_retries=0, http_client=http)
    http.close()


def request_for(construct):
    extra, _ = CONSTRUCTS[construct]
    return {"model": "anthropic/claude-sonnet-4-6", "max_tokens": 64, "messages": [USER_TEXT], **extra}


@pytest.mark.parametrize("construct", CONSTRUCTS)
def test_anthropic_gets_what_it_accepts_unchanged_but_the_model(gateway, claude, fake_upstream, sent_by_sdk, construct):
    raw = claude.messages.with_raw_response.create(**request_for(construct))
    message = raw.parse()
    assert message.model == "anthropic/claude-sonnet-4-6"
    (client_body,) = sent_by_sdk
    (upstream,) = fake_upstream.requests
    assert upstream.provider == "anthropic"
    assert upstream.json == {**client_body, "model": "claude-sonnet-4-6"}
    log = gateway.log(raw.headers["x-smartflow-request-id"])
    assert log.status_code == 200 and log.provider == "anthropic" and log.prompt == client_body["messages"]


@pytest.mark.parametrize("provider", ["openai", "gemini", "ollama"])
@pytest.mark.parametrize("construct", CONSTRUCTS)
def test_other_providers_refuse_it_naming_the_construct(gateway, claude, fake_upstream, construct, provider):
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(**request_for(construct), extra_headers={"x-smartflow-provider": provider})
    message = err.value.body["error"]["message"]
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "invalid_request_error"
    for words in CONSTRUCTS[construct][1]:
        assert words in message
    if construct != "max_tokens_zero":
        assert f"sent to {provider}" in message
    assert fake_upstream.requests == []
    log = gateway.log(err.value.response.headers["x-smartflow-request-id"])
    assert log.status_code == 400 and log.provider == provider


def test_the_native_path_checks_only_what_it_needs(gateway, claude, fake_upstream):
    for body, fragment in [({"model": "claude-sonnet-4-6", "max_tokens": 5}, "messages"),
                           ({"model": "claude-sonnet-4-6", "messages": "hi"}, "messages"),
                           ({"model": "claude sonnet", "messages": [USER_TEXT]}, "model"),
                           ({"model": "claude-sonnet-4-6", "messages": [USER_TEXT], "stream": "yes"}, "stream")]:
        r = httpx.post(gateway.proxy_url + "/v1/messages", json=body, headers={"x-api-key": claude.api_key})
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text
    assert fake_upstream.requests == []
    # What Anthropic judges itself goes on as it is (here its own 400 comes back).
    r = httpx.post(gateway.proxy_url + "/v1/messages", headers={"x-api-key": claude.api_key},
                   json={"model": "claude-sonnet-4-6", "messages": [USER_TEXT]})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    assert len(fake_upstream.requests) == 1
