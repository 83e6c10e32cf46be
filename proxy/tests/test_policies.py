"""The request-policy chain: phases in order, short-circuits, zero cost when off, and one policy across the wire."""
import asyncio

import httpx
import pytest

from proxy import gateway, policies
from proxy.policies import Answer, Chain, Exchange, Policy
from proxy.providers.base import ClientError


class Recorder(Policy):
    def __init__(self, name, seen, answer=None):
        self.name, self.seen, self.answer = name, seen, answer

    async def request(self, ex):
        self.seen.append((self.name, "request"))
        return self.answer

    def chunk(self, ex, chunk):
        self.seen.append((self.name, "chunk"))
        return {**chunk, "by": [*chunk.get("by", ()), self.name]}

    async def response(self, ex, response):
        self.seen.append((self.name, "response"))

    def log(self, ex):
        self.seen.append((self.name, "log"))


class Call:  # what the chain needs of gateway.Call
    gate = None
    pass_gate = gateway.Call.pass_gate


def exchange():
    return Exchange(client_format=None, headers={}, principal=None, trace=None, call=Call())


def test_phases_run_in_order():
    seen = []
    chain = Chain([Recorder("a", seen), Recorder("b", seen)])
    ex = exchange()
    assert asyncio.run(chain.request(ex)) is None
    assert chain.chunk(ex, {})["by"] == ["a", "b"]
    asyncio.run(chain.response(ex, {}))
    chain.log(ex)
    assert seen == [("a", "request"), ("b", "request"), ("a", "chunk"), ("b", "chunk"),
                    ("a", "response"), ("b", "response"), ("a", "log"), ("b", "log")]


def test_a_lookahead_starts_before_the_first_request_phase():
    class Ahead(Recorder):
        def lookahead(self, ex):
            self.seen.append((self.name, "lookahead"))

    seen = []
    asyncio.run(Chain([Recorder("guard", seen), Recorder("limits", seen), Ahead("cache", seen)]).request(exchange()))
    assert seen == [("cache", "lookahead"), ("guard", "request"), ("limits", "request"), ("cache", "request")]
    seen.clear()  # the first policy's own lookahead is its request phase's business
    asyncio.run(Chain([Ahead("cache", seen), Recorder("guard", seen)]).request(exchange()))
    assert seen == [("cache", "request"), ("guard", "request")]


def test_an_answer_short_circuits_the_later_request_phases():
    seen = []
    answer = Answer({"choices": []})
    chain = Chain([Recorder("a", seen), Recorder("b", seen, answer), Recorder("c", seen)])
    assert asyncio.run(chain.request(exchange())) is answer
    assert seen == [("a", "request"), ("b", "request")]


def test_a_gate_is_passed_before_the_next_policy_or_an_answer_and_its_refusal_stops_the_chain():
    """A policy may leave a check in flight (the limits' reservation): the next request phase, and
    a policy's answer, wait for it; its refusal is the request's answer."""
    seen = []

    class Gate(Recorder):
        def __init__(self, name, seen, refuse=False):
            super().__init__(name, seen)
            self.refuse = refuse

        async def request(self, ex):
            seen.append((self.name, "request"))
            ex.call.gate = self.check

        async def check(self):
            await asyncio.sleep(0.01)
            seen.append((self.name, "gate"))
            if self.refuse:
                raise ClientError("refused", status=429)

    answer = Answer({"choices": []})
    ex = exchange()
    assert asyncio.run(Chain([Gate("limits", seen), Recorder("cache", seen, answer)]).request(ex)) is answer
    assert seen == [("limits", "request"), ("limits", "gate"), ("cache", "request")] and ex.call.gate is None
    seen.clear()
    ex = exchange()
    assert asyncio.run(Chain([Recorder("guard", seen), Gate("limits", seen)]).request(ex)) is None
    assert seen == [("guard", "request"), ("limits", "request")]  # last: left for the upstream call to pass
    asyncio.run(ex.call.pass_gate())
    asyncio.run(ex.call.pass_gate())  # once
    assert seen[-1] == ("limits", "gate") and seen.count(("limits", "gate")) == 1
    seen.clear()
    with pytest.raises(ClientError):
        asyncio.run(Chain([Gate("limits", seen, refuse=True), Recorder("cache", seen, answer)]).request(exchange()))
    assert seen == [("limits", "request"), ("limits", "gate")]


def test_a_held_back_chunk_stops_there():
    class Hold(Policy):
        def chunk(self, ex, chunk):
            return None
    seen = []
    assert Chain([Hold(), Recorder("b", seen)]).chunk(exchange(), {}) is None and seen == []


def test_phases_a_policy_does_not_implement_are_not_called():
    class OnlyLog(Policy):
        def log(self, ex):
            pass
    chain = Chain([OnlyLog()])
    assert (chain.requests, chain.chunks, chain.responses) == ((), (), ()) and len(chain.logs) == 1
    assert Chain([]).policies == ()


def test_the_chain_follows_the_settings(settings):
    settings.SMARTFLOW_CACHE, settings.SMARTFLOW_LIMITS = "off", False
    assert [p.name for p in policies.chain().policies] == ["guardrails"]  # off without policies in the database
    settings.SMARTFLOW_CACHE = "exact"
    assert [p.name for p in policies.chain().policies] == ["guardrails", "cache"]
    settings.SMARTFLOW_LIMITS = True  # the limits run before the cache: a hit counts against the rate
    assert [p.name for p in policies.chain().policies] == ["guardrails", "limits", "cache"]


def test_answer_chunks_follow_a_live_streams_order():
    answer = Answer({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "hi", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]})
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in answer.chunks()]
    assert deltas == [({"role": "assistant", "content": ""}, None), ({"content": "hi"}, None),
                      ({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                        "function": {"name": "f", "arguments": "{}"}}]}, None),
                      ({}, "tool_calls")]


class Refuse(Policy):
    name = "refuse"

    async def request(self, ex):
        if "forbidden" in str(ex.call.chat["messages"]):
            raise ClientError("Refused by policy.", code="policy_refused")
        ex.out["x-smartflow-test"] = "seen"


class Shout(Policy):
    name = "shout"

    def chunk(self, ex, chunk):
        for choice in chunk.get("choices", ()):
            if choice["delta"].get("content"):
                choice["delta"]["content"] = choice["delta"]["content"].upper()
        return chunk

    def log(self, ex):
        ex.trace.set(compliance="flagged")


@pytest.mark.parametrize("stream", [False, True])
def test_policies_answer_refuse_change_and_log_across_the_wire(gateway, proxy_client, fake_upstream, monkeypatch,
                                                               stream):
    monkeypatch.setattr(policies, "chain", lambda: Chain([Refuse(), Shout()]))
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    r = proxy_client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["x-smartflow-test"] == "seen"
    if stream:
        import orjson

        chunks = [orjson.loads(line[6:]) for line in r.text.split("\n\n") if line.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "ECHO: HELLO"
    log = gateway.log(r.headers["x-smartflow-request-id"])
    assert log.compliance == "flagged"
    refused = proxy_client.post("/v1/chat/completions", json={**body, "messages": [
        {"role": "user", "content": "forbidden"}]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "policy_refused"
    assert gateway.log(refused.headers["x-smartflow-request-id"]).compliance == "flagged"
    assert len(fake_upstream.requests) == 1
