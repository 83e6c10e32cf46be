"""POST /v1/messages: the real anthropic SDK against every provider, and the format matrix."""
import base64
import json

import anthropic
import httpx
import openai
import pytest

from tests.fake_upstream import COMPLETION_TOKENS, ECHO_PREFIX, PROMPT_TOKENS, TOOL_ARGUMENTS

PROVIDERS = ["openai", "anthropic", "gemini", "ollama"]
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


@pytest.fixture
def claude(gateway, virtual_key):
    return anthropic.Anthropic(base_url=gateway.proxy_url, api_key=virtual_key, max_retries=0)


def via(provider):
    return {"x-smartflow-provider": provider}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_anthropic_sdk_chats_with_every_provider(gateway, claude, fake_upstream, provider):
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=100, system="Be brief.",
        messages=[{"role": "user", "content": "hello claude"}], extra_headers=via(provider))
    message = raw.parse()
    assert message.model == "claude-sonnet-4-6" and message.stop_reason == "end_turn"
    assert message.content[0].text == ECHO_PREFIX + "hello claude"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert raw.headers["x-smartflow-provider"] == provider
    sent = fake_upstream.last_request
    assert sent.provider == provider and "Be brief." in json.dumps(sent.json)
    log = gateway.log(raw.headers["x-smartflow-request-id"])
    assert log.endpoint == "messages" and log.status_code == 200


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_anthropic_sdk_streams_from_every_provider(gateway, claude, fake_upstream, provider):
    with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=100,
                                messages=[{"role": "user", "content": "stream to claude"}],
                                extra_headers=via(provider)) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == ECHO_PREFIX + "stream to claude" and len(texts) >= 2
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == COMPLETION_TOKENS


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
def test_the_anthropic_sdk_round_trips_a_tool_call(gateway, claude, fake_upstream, provider, stream):
    """Regression: streamed tool arguments must not be lost on the way to an Anthropic client."""
    question = [{"role": "user", "content": "what is the weather in Paris?"}]
    kwargs = dict(model="claude-sonnet-4-6", max_tokens=200, tools=[TOOL], extra_headers=via(provider))
    if stream:
        with claude.messages.stream(messages=question, **kwargs) as s:
            message = s.get_final_message()
    else:
        message = claude.messages.create(messages=question, **kwargs)
    assert message.stop_reason == "tool_use"
    use = [b for b in message.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and use.input == TOOL_ARGUMENTS and use.id
    follow = claude.messages.create(messages=question + [
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]}], **kwargs)
    assert follow.content[0].text == ECHO_PREFIX + "18C" and follow.stop_reason == "end_turn"


def test_anthropic_client_errors_come_back_in_anthropic_format(gateway, claude, fake_upstream):
    fake_upstream.script(provider="openai", status=503)  # OpenAI overloaded -> 529 for an Anthropic client
    with pytest.raises(anthropic.APIStatusError) as err:
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=10, extra_headers=via("openai"),
                               messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 529 and err.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[])
    assert err.value.body["type"] == "error" and "messages" in err.value.body["error"]["message"]
    bad = anthropic.Anthropic(base_url=gateway.proxy_url, api_key="sk-sf-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "x"}])


# --- the matrix: client format x provider x streaming x content -------------------------

def openai_request(kind):
    if kind == "tools":
        return {"messages": [{"role": "user", "content": "weather in Paris?"}],
                "tools": [{"type": "function", "function": {"name": "get_weather",
                                                            "parameters": TOOL["input_schema"]}}]}
    content = "matrix text" if kind == "text" else [
        {"type": "text", "text": "matrix image"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]
    return {"messages": [{"role": "user", "content": content}]}


def anthropic_request(kind):
    if kind == "tools":
        return {"messages": [{"role": "user", "content": "weather in Paris?"}], "tools": [TOOL]}
    content = "matrix text" if kind == "text" else [
        {"type": "text", "text": "matrix image"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}]
    return {"messages": [{"role": "user", "content": content}]}


def ask_openai(gateway, master_key, provider, stream, kind):
    sdk = openai.OpenAI(base_url=gateway.proxy_url + "/v1", api_key=master_key, max_retries=0)
    body = dict(model="gpt-4.1", extra_headers=via(provider), **openai_request(kind))
    if not stream:
        m = sdk.chat.completions.create(**body).choices[0]
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in m.message.tool_calls or []]
        return m.message.content, calls, m.finish_reason
    text, calls, finish = "", {}, None
    for chunk in sdk.chat.completions.create(stream=True, **body):
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
            for t in c.delta.tool_calls or []:
                slot = calls.setdefault(t.index, ["", ""])
                slot[0] += t.function.name or ""
                slot[1] += t.function.arguments or ""
    return text or None, [(n, json.loads(a)) for n, a in calls.values()], finish


def ask_anthropic(gateway, master_key, provider, stream, kind):
    sdk = anthropic.Anthropic(base_url=gateway.proxy_url, api_key=master_key, max_retries=0)
    body = dict(model="claude-sonnet-4-6", max_tokens=100, extra_headers=via(provider), **anthropic_request(kind))
    if stream:
        with sdk.messages.stream(**body) as s:
            m = s.get_final_message()
    else:
        m = sdk.messages.create(**body)
    text = "".join(b.text for b in m.content if b.type == "text") or None
    calls = [(b.name, b.input) for b in m.content if b.type == "tool_use"]
    finish = {"end_turn": "stop", "tool_use": "tool_calls"}[m.stop_reason]
    return text, calls, finish


@pytest.mark.parametrize("kind", ["text", "tools", "image"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_matrix(gateway, master_key, fake_upstream, client, provider, stream, kind):
    ask = ask_openai if client == "openai" else ask_anthropic
    text, calls, finish = ask(gateway, master_key, provider, stream, kind)
    if kind == "tools":
        assert finish == "tool_calls" and calls == [("get_weather", TOOL_ARGUMENTS)]
    else:
        assert finish == "stop" and calls == []
        assert text == ECHO_PREFIX + ("matrix text" if kind == "text" else "matrix image")
    sent = fake_upstream.last_request
    assert sent.provider == provider
    if kind == "image":
        assert PNG_B64 in json.dumps(sent.json)


# --- Anthropic client to an Anthropic upstream: the body goes out as is ---------------------

def test_anthropic_to_anthropic_keeps_what_the_openai_form_cannot_carry(gateway, claude, fake_upstream):
    fake_upstream.script(provider="anthropic", body={
        "id": "msg_native", "type": "message", "role": "assistant", "model": "claude-opus-4-6",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig-1"},
                    {"type": "text", "text": "native answer", "citations": None}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 0}})
    raw = claude.messages.with_raw_response.create(
        model="claude-opus-4-6", max_tokens=2048, thinking={"type": "adaptive"},
        system=[{"type": "text", "text": "long shared context", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hi"}], extra_headers={"anthropic-beta": "some-beta-2026"})
    message = raw.parse()
    assert [b.type for b in message.content] == ["thinking", "text"]  # nothing dropped on the way back
    assert message.content[0].signature == "sig-1" and message.id == "msg_native"
    sent = fake_upstream.last_request
    assert sent.json["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent.json["thinking"] == {"type": "adaptive"}
    assert sent.headers["anthropic-beta"] == "some-beta-2026"
    assert sent.headers["x-api-key"] != claude.api_key
    log = gateway.log(raw.headers["x-smartflow-request-id"])
    assert log.tokens_input == 107 and log.tokens_output == 3  # cache reads count as input


def test_anthropic_to_anthropic_streams_the_upstream_events_unchanged(gateway, claude, fake_upstream):
    with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=100,
                                messages=[{"role": "user", "content": "native stream"}]) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert events.count("content_block_delta") >= 2
    assert final.content[0].text == ECHO_PREFIX + "native stream" and final.model == "claude-sonnet-4-6"
    assert final.usage.output_tokens == COMPLETION_TOKENS


def test_native_streams_forward_every_upstream_event(gateway, master_key, fake_upstream):
    """The translator never writes ping events; seeing the upstream's proves the pass-through."""
    body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "raw events"}]}
    with httpx.stream("POST", gateway.proxy_url + "/v1/messages", json=body, timeout=30,
                      headers={"x-api-key": master_key}) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")]
    assert names[0] == "message_start" and "ping" in names and names[-1] == "message_stop"
    start = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
    assert start["message"]["model"] == "claude-sonnet-4-6"
    assert "[DONE]" not in "".join(lines)


def test_a_native_stream_cut_after_message_delta_still_ends_with_message_stop(gateway, claude, fake_upstream):
    events = [
        {"type": "message_start", "message": {"id": "msg_cut", "type": "message", "role": "assistant",
                                              "model": "claude-sonnet-4-6", "content": [], "stop_reason": None,
                                              "stop_sequence": None, "usage": {"input_tokens": 4, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "almost"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 2}},
    ]
    fake_upstream.script(provider="anthropic", stream_events=events)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream("POST", gateway.proxy_url + "/v1/messages", json=body, timeout=30,
                      headers={"x-api-key": claude.api_key}) as r:
        names = [line.split(": ", 1)[1] for line in r.iter_lines() if line.startswith("event: ")]
    assert names[-2:] == ["message_delta", "message_stop"]
