"""The policy's chunk phase on scripted streams (n > 1, interleaved tool calls, values split at
every position), checked with the openai SDK's own stream accumulator."""
import json
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from proxy.guardrails import rules as R
from proxy.policies import Exchange
from proxy.policies.guardrails import GuardrailsPolicy
from proxy.providers.base import ClientError

EMAIL = "jane.roe@example.org"


class Rules:
    def __init__(self, *policies):
        self.rules = [R.Rule.compile(R.validate(p)) for p in policies]

    async def get(self):
        return self.rules


def exchange():
    principal = types.SimpleNamespace(team=None, team_id=None)
    call = types.SimpleNamespace(is_stream=True, is_native=False, chat={"messages": []})
    return Exchange(None, {}, principal, types.SimpleNamespace(stage=lambda *_: 0, fields={}), call)


def run(policy, chunks):
    import asyncio

    ex = exchange()
    asyncio.run(policy.request(ex))
    state = ChatCompletionStreamState()
    for i, chunk in enumerate(chunks):
        out = policy.chunk(ex, json.loads(json.dumps(chunk)))
        if out is None:  # held back whole: the gateway sends nothing for it
            continue
        body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", **out}
        state.handle_chunk(ChatCompletionChunk.model_validate(body))
    return state.get_final_completion(), ex


def delta(index, finish=None, **fields):
    return {"choices": [{"index": index, "delta": fields, "finish_reason": finish}]}


REDACT = {"name": "pii", "kind": "pii", "action": "redact", "on": "response"}


@pytest.mark.parametrize("split", range(1, 40))
def test_a_value_split_anywhere_is_redacted(split):
    text = f"write {EMAIL} now"
    chunks = [delta(0, role="assistant", content=""), delta(0, content=text[:split]), delta(0, content=text[split:]),
              delta(0, "stop")]
    final, _ = run(GuardrailsPolicy(Rules(REDACT)), chunks)
    assert final.choices[0].message.content == "write <EMAIL_ADDRESS> now"


def test_two_choices_and_interleaved_tool_calls():
    args_a, args_b = json.dumps({"to": EMAIL}), json.dumps({"cc": "bob@example.com", "n": 1})
    chunks = [delta(0, role="assistant", content="Sending to jane.r"), delta(1, role="assistant", content="ok "),
              delta(0, content="oe@example.org:", tool_calls=[{"index": 0, "id": "a", "type": "function",
                                                                "function": {"name": "send", "arguments": args_a[:9]}}]),
              delta(0, tool_calls=[{"index": 0, "function": {"arguments": args_a[9:]}}]),
              delta(0, tool_calls=[{"index": 1, "id": "b", "type": "function",
                                    "function": {"name": "cc", "arguments": args_b[:12]}}]),
              delta(1, content=f"mail {EMAIL}"),
              delta(0, tool_calls=[{"index": 1, "function": {"arguments": args_b[12:]}}]),
              delta(1, "stop"), delta(0, "tool_calls")]
    final, ex = run(GuardrailsPolicy(Rules(REDACT)), chunks)
    first, second = final.choices
    assert first.message.content == "Sending to <EMAIL_ADDRESS>:"
    assert [json.loads(c.function.arguments) for c in first.message.tool_calls] == [
        {"to": "<EMAIL_ADDRESS>"}, {"cc": "<EMAIL_ADDRESS>", "n": 1}]
    assert second.message.content == "ok mail <EMAIL_ADDRESS>"
    assert ex.state["guardrails"].stream_counts == {("EMAIL_ADDRESS", "redact"): 4}


def test_a_block_mid_stream_raises_the_guardrail_error():
    policy = GuardrailsPolicy(Rules({**REDACT, "action": "block", "entities": ["CREDIT_CARD"]}))
    ex = exchange()
    import asyncio

    asyncio.run(policy.request(ex))
    assert policy.chunk(ex, delta(0, content="card 4111 1111 ")) is None  # held: nothing released
    with pytest.raises(ClientError) as err:
        policy.chunk(ex, delta(0, content="1111 1111 and more text " + "z" * 300))
    assert err.value.code == "guardrail_blocked"


def test_without_response_rules_chunks_pass_untouched():
    policy = GuardrailsPolicy(Rules({**REDACT, "on": "prompt"}))
    ex = exchange()
    import asyncio

    asyncio.run(policy.request(ex))
    chunk = delta(0, content=EMAIL)
    assert policy.chunk(ex, chunk) is chunk and chunk["choices"][0]["delta"]["content"] == EMAIL


def test_a_refusal_is_windowed_like_content():
    chunks = [delta(0, role="assistant", refusal="I will not mail jane.r"), delta(0, refusal="oe@example.org."),
              delta(0, "stop")]
    final, _ = run(GuardrailsPolicy(Rules(REDACT)), chunks)
    assert final.choices[0].message.refusal == "I will not mail <EMAIL_ADDRESS>."


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                           st.sampled_from(["role", "content", "text", "type", "tool_calls", "function",
                                            "arguments", "name"]), inner, max_size=4), max_leaves=20)


@given(st.lists(st.dictionaries(st.sampled_from(["role", "content", "tool_calls", "name"]), JSONISH, max_size=4),
                max_size=4))
@settings(max_examples=300, deadline=None)
def test_any_message_shape_is_checked_without_failing(messages):
    from proxy.policies.guardrails import _check, answer_slots, masked, prompt_slots

    rules = Rules(REDACT, {"name": "inj", "kind": "injection", "action": "flag"}).rules
    verdict = _check(rules, prompt_slots({"messages": messages}))
    assert verdict.block is None
    masked(messages, rules)
    _check(rules, answer_slots({"choices": [{"message": m} for m in messages if isinstance(m, dict)]}))


class Refreshing(Rules):
    """A snapshot refreshed between two reads: the rules the first time, none after."""

    async def get(self):
        rules, self.rules = self.rules, []
        return rules


def test_passthrough_and_request_see_the_same_rules_whatever_the_snapshot_does():
    import asyncio

    from proxy.policies.guardrails import GuardrailsPolicy

    policy = GuardrailsPolicy(Refreshing({**REDACT, "on": "prompt"}))
    ex = exchange()
    ex.call.chat = {"messages": [{"role": "user", "content": f"mail {EMAIL}"}]}
    ex.call.route = types.SimpleNamespace(provider="openai", upstream_model="gpt-4.1")
    ex.call.request = types.SimpleNamespace(body=b"")
    ex.call.provider = types.SimpleNamespace(build_request=lambda chat, *_: types.SimpleNamespace(body=json.dumps(chat)))
    # False sends the request down the translated path: its request phase must then redact it.
    assert asyncio.run(policy.passthrough(ex)) is False
    asyncio.run(policy.request(ex))
    assert EMAIL not in ex.call.request.body and "mail <EMAIL_ADDRESS>" in ex.call.request.body


def test_a_chunk_whose_text_is_all_held_is_not_sent():
    policy = GuardrailsPolicy(Rules(REDACT))
    ex = exchange()
    import asyncio

    asyncio.run(policy.request(ex))
    role = delta(0, role="assistant", content="")
    assert policy.chunk(ex, role) is role  # the role chunk goes out as it is
    assert policy.chunk(ex, delta(0, content="mail jane.r")) is None  # held whole: no empty event
    assert policy.chunk(ex, delta(0, refusal="no")) is None
    with_logprobs = {"choices": [{"index": 0, "delta": {"content": "oe@"}, "logprobs": {"content": []},
                                  "finish_reason": None}]}
    assert policy.chunk(ex, with_logprobs) is None  # its logprobs dropped (they spell the text): held too
    assert with_logprobs["choices"][0]["logprobs"] is None
    usage = {**delta(0, content="exa"), "usage": {"completion_tokens": 3}}
    assert policy.chunk(ex, usage) is usage  # anything else in it still goes out
    last = policy.chunk(ex, delta(0, "stop", content="mple.org"))
    assert last["choices"][0]["delta"] == {"content": "mail <EMAIL_ADDRESS>", "refusal": "no"}


def test_texts_the_rules_cannot_check_never_reach_the_client():
    """An OpenAI-compatible upstream's delta can carry more text than content, refusal and tool
    calls (reasoning_content, a legacy function_call, an audio transcript): under a redact rule it is
    dropped, as logprobs are, not passed on unchecked."""
    policy = GuardrailsPolicy(Rules(REDACT))
    ex = exchange()
    import asyncio

    asyncio.run(policy.request(ex))
    sent = [policy.chunk(ex, chunk) for chunk in (
        delta(0, role="assistant", content="", reasoning_content=f"they asked; {EMAIL} is the one"),
        delta(0, reasoning_content=EMAIL), delta(0, content="ok", function_call={"arguments": EMAIL}),
        delta(0, audio={"transcript": EMAIL}), delta(0, "stop"))]
    assert EMAIL not in json.dumps(sent)
    assert sent[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
