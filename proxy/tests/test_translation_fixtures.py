"""Table-driven translation tests over the captured payloads in fixtures/<provider>/.

request_*.json   OpenAI request in -> expected upstream URL, headers, body and dropped list
                 (or "error": the ClientError the adapter must raise)
response_*.json  upstream body in -> expected OpenAI choices/usage ("<generated>" = any call_ id)
stream_*.sse / stream_*.ndjson + stream_*.json
                 transcript replayed through parse_stream_event/finish_stream -> assembled
                 text, tool calls, finish_reason, usage (or the UpstreamError raised)
error_*.json     upstream status/headers/body -> expected UpstreamError fields
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from proxy.providers import PROVIDERS
from proxy.providers.base import ClientError, StreamState, UpstreamError

FIXTURES = Path(__file__).parent / "fixtures"
DEFAULT_KEYS = {"openai": "sk-test-openai", "anthropic": "sk-ant-test-anthropic",
                "gemini": "AIzaTestGeminiKey", "ollama": None}
DEFAULT_BASES = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com",
                 "gemini": "https://generativelanguage.googleapis.com",
                 "ollama": "http://localhost:11434"}
GENERATED_ID = re.compile(r"^call_[A-Za-z0-9]{24}$")


def cases(prefix: str, suffixes: tuple[str, ...] = (".json",)) -> list:
    found = []
    for provider in sorted(PROVIDERS):
        for path in sorted((FIXTURES / provider).glob(f"{prefix}_*")):
            if path.suffix in suffixes:
                found.append(pytest.param(provider, path, id=f"{provider}/{path.name}"))
    return found


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def match_ids(actual, expected):
    """Copy generated ids from actual into expected where expected says "<generated>"."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key, value in expected.items():
            if value == "<generated>":
                assert GENERATED_ID.match(actual.get(key, "")), actual.get(key)
                expected[key] = actual[key]
            else:
                match_ids(actual.get(key), value)
    elif isinstance(expected, list) and isinstance(actual, list):
        for a, e in zip(actual, expected):
            match_ids(a, e)
    return expected


def sse_events(text: str) -> list:
    """Minimal SSE reader for transcripts, framing as proxy/sse.py does: data lines joined
    per event, comments and [DONE] skipped, a bare JSON block (Gemini's final error) kept."""
    events = []
    for block in re.split(r"\r?\n\r?\n", text):
        block = block.strip()
        data = [line[5:].lstrip() for line in re.split(r"\r?\n", block) if line.startswith("data:")]
        if data and data != ["[DONE]"]:
            events.append(json.loads("\n".join(data)))
        elif not data and block.startswith("{"):
            events.append(json.loads(block))
    return events


def replay(provider: str, path: Path) -> tuple[list[dict], StreamState]:
    adapter = PROVIDERS[provider]
    text = path.read_text()
    if path.suffix == ".ndjson":
        assert adapter.stream_format == "ndjson"
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        assert adapter.stream_format == "sse"
        events = sse_events(text)
    state, chunks = StreamState(), []
    for event in events:
        chunks.extend(adapter.parse_stream_event(event, state))
    chunks.extend(adapter.finish_stream(state))
    return chunks, state


def assemble(chunks: list[dict]) -> dict:
    """What an OpenAI client would build from the chunks; checks their shape on the way."""
    assert chunks, "no chunks"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""} or \
        chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    text, calls, finishes = "", {}, []
    for body in chunks:
        assert set(body) == {"choices"}, "adapters must not emit usage chunks"
        [choice] = body["choices"]
        assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
        delta = choice["delta"]
        text += delta.get("content") or ""
        for call in delta.get("tool_calls") or []:
            if "id" in call:
                assert call["index"] not in calls, "a tool call started twice"
                calls[call["index"]] = {"id": call["id"], "name": call["function"]["name"],
                                        "arguments": call["function"].get("arguments", "")}
            else:
                calls[call["index"]]["arguments"] += call["function"]["arguments"]
        if choice["finish_reason"]:
            assert delta == {}
            finishes.append(choice["finish_reason"])
    assert len(finishes) == 1, f"expected exactly one finish chunk, got {finishes}"
    assert sorted(calls) == list(range(len(calls))), "tool call indexes must be 0..n-1"
    return {"text": text, "tool_calls": [calls[i] for i in sorted(calls)],
            "finish_reason": finishes[0]}


@pytest.mark.parametrize("provider,path", cases("request"))
def test_it_builds_the_upstream_request(provider, path):
    case = load(path)
    adapter = PROVIDERS[provider]
    args = (case["request"], case["model"], case.get("base_url", DEFAULT_BASES[provider]),
            case.get("api_key", DEFAULT_KEYS[provider]))
    if "error" in case:
        with pytest.raises(ClientError) as info:
            adapter.build_request(*args)
        assert info.value.status == case["error"].get("status", 400)
        assert info.value.param == case["error"].get("param")
        assert case["error"]["message_contains"] in info.value.message
        return
    original = json.dumps(case["request"], sort_keys=True)
    request = adapter.build_request(*args)
    expected = case["expected"]
    assert request.url == expected["url"]
    assert request.headers == expected["headers"]
    assert request.body == expected["body"]
    assert request.dropped == expected["dropped"]
    assert json.dumps(case["request"], sort_keys=True) == original, "the client request was mutated"
    json.dumps(request.body)  # must be serialisable as is


@pytest.mark.parametrize("provider,path", cases("response"))
def test_it_parses_the_upstream_response(provider, path):
    case = load(path)
    result = PROVIDERS[provider].parse_response(case["upstream"])
    assert result == match_ids(result, case["expected"])


@pytest.mark.parametrize("provider,path", cases("stream", (".sse", ".ndjson")))
def test_it_replays_the_stream_transcript(provider, path):
    expected = load(path.with_suffix(".json"))
    if "error" in expected:
        with pytest.raises(UpstreamError) as info:
            replay(provider, path)
        for key, value in expected["error"].items():
            assert getattr(info.value, key) == value, key
        return
    chunks, state = replay(provider, path)
    assembled = assemble(chunks)
    assert state.finished
    assert state.finish_reason == assembled["finish_reason"]
    assert state.usage == expected["usage"]
    del expected["usage"]
    assert assembled == match_ids(assembled, expected)


@pytest.mark.parametrize("provider,path", cases("error"))
def test_it_classifies_the_upstream_error(provider, path):
    case = load(path)
    error = PROVIDERS[provider].classify_error(case["status"], case["body"], case["headers"])
    assert isinstance(error, UpstreamError)
    for key, value in case["expected"].items():
        assert getattr(error, key) == value, key


def test_it_has_fixtures_of_every_kind_for_every_provider():
    for provider in PROVIDERS:
        names = [p.name for p in (FIXTURES / provider).iterdir()]
        for prefix in ("request_", "response_", "stream_", "error_"):
            assert any(n.startswith(prefix) for n in names), (provider, prefix)
