"""Images, structured output and stream timing through the live gateway."""
import base64
import json
import time

import httpx
import openai
import pytest

from tests.fake_upstream import ECHO_PREFIX

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake-image-bytes").decode()


def chat_with_image(url: str) -> dict:
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": url}}]}]}


def upstream_image(provider: str, body: dict):
    """Where each provider's wire format carries the image."""
    if provider == "openai":
        return body["messages"][0]["content"][1]["image_url"]["url"]
    if provider == "anthropic":
        return body["messages"][0]["content"][1]["source"]
    if provider == "gemini":
        return body["contents"][0]["parts"][1]["inlineData"]
    return body["messages"][0]["images"][0]


@pytest.mark.parametrize("provider,expected", [
    ("openai", PNG),
    ("anthropic", {"type": "base64", "media_type": "image/png", "data": PNG.split(",", 1)[1]}),
    ("gemini", {"mimeType": "image/png", "data": PNG.split(",", 1)[1]}),
    ("ollama", PNG.split(",", 1)[1]),
])
def test_data_url_images_reach_every_provider_in_its_form(proxy_client, fake_upstream, provider, expected):
    r = proxy_client.post("/v1/chat/completions", json=chat_with_image(PNG), headers={"x-smartflow-provider": provider})
    assert r.status_code == 200, r.text
    assert upstream_image(provider, fake_upstream.last_request.json) == expected


@pytest.mark.parametrize("provider,expected", [
    ("openai", "https://example.com/cat.png"),
    ("anthropic", {"type": "url", "url": "https://example.com/cat.png"}),
])
def test_http_images_pass_as_urls_where_the_provider_fetches_them(proxy_client, fake_upstream, provider, expected):
    r = proxy_client.post("/v1/chat/completions", json=chat_with_image("https://example.com/cat.png"),
                          headers={"x-smartflow-provider": provider})
    assert r.status_code == 200, r.text
    assert upstream_image(provider, fake_upstream.last_request.json) == expected


@pytest.mark.parametrize("provider", ["gemini", "ollama"])
def test_http_images_are_a_clear_400_where_the_provider_cannot_fetch(gateway, proxy_client, fake_upstream, provider):
    r = proxy_client.post("/v1/chat/completions", json=chat_with_image("https://example.com/cat.png"),
                          headers={"x-smartflow-provider": provider})
    assert r.status_code == 400 and "data: URL" in r.json()["error"]["message"]
    assert fake_upstream.requests == []


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@pytest.mark.parametrize("provider,check", [
    ("openai", lambda b: b["response_format"]["json_schema"]["schema"] == SCHEMA),
    ("anthropic", lambda b: b["output_config"]["format"] == {"type": "json_schema", "schema": SCHEMA}),
    ("gemini", lambda b: b["generationConfig"]["responseMimeType"] == "application/json"
     and b["generationConfig"]["responseJsonSchema"] == SCHEMA),
    ("ollama", lambda b: b["format"] == SCHEMA),
])
def test_json_schema_output_reaches_each_providers_mechanism(proxy_client, fake_upstream, provider, check):
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "answer in JSON"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}}
    r = proxy_client.post("/v1/chat/completions", json=body, headers={"x-smartflow-provider": provider})
    assert r.status_code == 200, r.text
    assert check(fake_upstream.last_request.json)


def test_reasoning_effort_becomes_anthropic_thinking_and_no_thinking_leaks(proxy_client, fake_upstream):
    fake_upstream.script(provider="anthropic", body={
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-opus-4-6",
        "content": [{"type": "thinking", "thinking": "secret chain of thought", "signature": "sig"},
                    {"type": "text", "text": "42"}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 9}})
    r = proxy_client.post("/v1/chat/completions", json={
        "model": "gpt-5.4", "reasoning_effort": "high", "messages": [{"role": "user", "content": "think"}]},
        headers={"x-smartflow-provider": "anthropic"})
    assert r.status_code == 200, r.text
    sent = fake_upstream.last_request.json
    assert sent["thinking"]["type"] in ("adaptive", "enabled")
    assert r.json()["choices"][0]["message"]["content"] == "42"
    assert "secret chain" not in r.text


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "ollama"])
def test_the_first_chunk_reaches_the_client_before_the_upstream_finishes(gateway, master_key, fake_upstream, provider):
    """No buffering: time to first byte follows the upstream's first event."""
    fake_upstream.script(provider=provider, event_delay=0.4)
    body = {"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "a b c d e f"}]}
    started = time.monotonic()
    arrivals = []
    with httpx.stream("POST", gateway.proxy_url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {master_key}", "x-smartflow-provider": provider}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 2
    # Events are 0.4 s apart upstream; the first text must not wait for the last.
    assert arrivals[-1] - arrivals[0] >= 0.3


def test_system_instructions_reach_gemini(proxy_client, fake_upstream):
    r = proxy_client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": [
        {"role": "system", "content": "You are terse."}, {"role": "developer", "content": "Use French."},
        {"role": "user", "content": "hi"}]}, headers={"x-smartflow-provider": "gemini"})
    assert r.status_code == 200
    parts = fake_upstream.last_request.json["systemInstruction"]["parts"]
    assert "You are terse." in json.dumps(parts) and "Use French." in json.dumps(parts)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "ollama"])
def test_several_tool_calls_in_one_turn_and_their_results(gateway, master_key, fake_upstream, provider):
    """Two calls in one assistant turn, both results sent back in one follow-up."""
    sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=master_key, max_retries=0)
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
             for n in ("get_weather", "get_time")]
    messages = [{"role": "user", "content": "weather and time in Paris"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_a1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                    {"id": "call_b2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_a1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_b2", "content": "noon"}]
    out = sdk.chat.completions.create(model="gpt-4.1", messages=messages, tools=tools,
                                      extra_headers={"x-smartflow-provider": provider})
    assert out.choices[0].message.content.startswith(ECHO_PREFIX)
    sent = json.dumps(fake_upstream.last_request.json)
    assert "18C" in sent and "noon" in sent
