"""The guardrails policy: PII, secrets, prompt injection, regex and keyword rules on the prompt and
on the answer (flag, redact, block), per team, from the database (proxy.models.GuardrailPolicy).

Runs before the cache: a cache hit never bypasses a prompt rule, and the cache key is built from
the redacted prompt the provider sees. Its response phase runs before the cache's too, so what is
stored is the redacted answer, and a blocked answer (a ClientError) is never stored. A request a
rule applies to is never a native pass-through: its body must be read and maybe changed, and its
answer checked, which only the translated path does."""
from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings

from proxy.guardrails import rules as R
from proxy.guardrails.stream import Blocked, Window
from proxy.providers.base import ClientError
from proxy.snapshot import Snapshot

from . import Exchange, Policy

_STRUCTURE = frozenset({"role", "type", "id", "tool_call_id", "model", "media_type"})


def _load() -> list[R.Rule]:
    from proxy.models import GuardrailPolicy

    return [R.Rule.compile(p.as_policy()) for p in GuardrailPolicy.objects.filter(enabled=True).order_by("name")]


policies = Snapshot(_load)


def blocked(rule: R.Rule) -> ClientError:
    # The policy's name, never the matched text.
    return ClientError(f"Blocked by guardrail policy '{rule.name}'.", code="guardrail_blocked")


@dataclass
class GuardState:
    prompt_rules: list
    response_rules: list
    prompt: R.Verdict | None = None
    response: R.Verdict | None = None
    windows: dict = field(default_factory=dict)  # (choice, "content" | "refusal" | tool index) -> Window
    stream_rules: list = field(default_factory=list)  # the redact and block rules a stream holds back for
    stream_counts: dict = field(default_factory=dict)
    stream_triggered: set = field(default_factory=set)
    heuristics: dict = field(default_factory=dict)
    blocked_by: str = ""


def _dicts(value) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _arguments(calls) -> list[tuple[dict, str, bool]]:
    functions = (call.get("function") for call in _dicts(calls))
    return [(f, "arguments", True) for f in functions if isinstance(f, dict) and isinstance(f.get("arguments"), str)]


def prompt_slots(chat: dict) -> list[tuple[dict, str, bool]]:
    """(container, key, untrusted) of every text the provider reads: message contents, text parts,
    names, refusals and tool arguments; the predicted output; the descriptions in tools and in a
    response_format schema (the operator's, like the system prompt: not checked for injection)."""
    slots = []
    for message in _dicts(chat.get("messages")):
        untrusted = message.get("role") not in ("system", "developer")
        slots += _texts(message, "content", untrusted)
        slots += [(message, key, untrusted) for key in ("name", "refusal") if isinstance(message.get(key), str)]
        slots += [(holder, key, untrusted) for holder, key, _ in _arguments(message.get("tool_calls"))]
    if isinstance(chat.get("prediction"), dict):
        slots += _texts(chat["prediction"], "content", True)
    for tool in _dicts(chat.get("tools")):
        slots += [(holder, "description", False) for holder in _described(tool.get("function"))]
    slots += [(holder, "description", False) for holder in _described(chat.get("response_format"))]
    return slots


def _texts(holder: dict, key: str, untrusted: bool) -> list[tuple[dict, str, bool]]:
    """A content: a string, or a list of parts with text, which the provider reads joined (a value
    split across two parts is one value)."""
    content = holder.get(key)
    if isinstance(content, str):
        return [(holder, key, untrusted)]
    parts = [part for part in _dicts(content) if isinstance(part.get("text"), str)]
    return [(_Parts(parts), "text", untrusted)] if len(parts) > 1 else [(p, "text", untrusted) for p in parts]


class _Parts:
    """The text parts of one content as one slot: their joined text, redacted part by part."""

    def __init__(self, parts: list[dict]):
        self.parts = parts

    def __getitem__(self, key: str) -> str:
        return "".join(part["text"] for part in self.parts)

    def redact(self, found: list) -> None:
        for part, text in zip(self.parts, R.replace_parts([p["text"] for p in self.parts], found)):
            part["text"] = text


def _described(value) -> list[dict]:
    """Every object with a string description in a tool (a JSON schema nests them at any depth)."""
    found, stack = [], [value]
    while stack:  # not recursive: a client's nesting cannot exhaust the stack
        value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("description"), str):
                found.append(value)
            stack += [v for v in value.values() if isinstance(v, (dict, list))]
        elif isinstance(value, list):
            stack += [v for v in value if isinstance(v, (dict, list))]
    return found


def answer_slots(response: dict) -> list[tuple[dict, str, bool]]:
    slots = []
    for choice in _dicts(response.get("choices")):
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        slots += [(message, key, True) for key in ("content", "refusal") if isinstance(message.get(key), str)]
        slots += _arguments(message.get("tool_calls"))
    return slots


def _check(rules: list, slots) -> R.Verdict:
    verdict = R.evaluate(rules, [(holder[key], untrusted) for holder, key, untrusted in slots])
    for (holder, key, _), found in zip(slots, verdict.send):
        if found and isinstance(holder, _Parts):
            holder.redact(found)
        elif found:
            holder[key] = R.replace(holder[key], found)
    return verdict


def masked(value, rules: list):
    """A copy of a prompt or answer (any shape) with every match of the rules replaced."""
    if isinstance(value, str):
        return R.mask(value, rules)
    if isinstance(value, list):
        out = [masked(v, rules) for v in value]
        parts = [v for v in out if isinstance(v, dict) and isinstance(v.get("text"), str)]
        if len(parts) > 1:  # text parts read joined: masked joined (their texts as sent, not masked apart)
            texts = [v["text"] for v in value if isinstance(v, dict) and isinstance(v.get("text"), str)]
            for part, text in zip(parts, R.mask_parts(texts, rules)):
                part["text"] = text
        return out
    if isinstance(value, dict):
        return {k: v if k in _STRUCTURE else masked(v, rules) for k, v in value.items()}
    return value


def _state(ex: Exchange, rules: list) -> GuardState:
    if not rules:
        return _EMPTY  # nothing in it changes when no rule applies
    team = ex.principal.team
    prompt, response = [r for r in rules if r.applies(team, "prompt")], [r for r in rules if r.applies(team, "response")]
    if not (prompt or response):
        return _EMPTY
    state = GuardState(prompt, response)
    state.stream_rules = [r for r in state.response_rules if r.action in ("redact", "block")]
    return state


_NONE: list = []  # shared, never changed: no rows cost no list per request
_EMPTY = GuardState(_NONE, _NONE)
# Before the first snapshot load there are no rules to go by: the VASLog masks every built-in entity.
_EVERY_ENTITY = [R.Rule.compile(R.validate({"name": "unchecked", "kind": "pii", "action": "flag"}))]


_TEXTS = frozenset({"content", "refusal"})
_CHOICE = frozenset({"index", "delta", "logprobs", "finish_reason"})
# What the response rules check of a message or a delta. An OpenAI-compatible upstream's may carry
# other text (reasoning_content, a legacy function_call, an audio transcript): under a redact or block
# rule it is dropped, as logprobs are, rather than passed on unchecked.
_CHECKED = frozenset({"role", "content", "refusal", "tool_calls"})


def _checked_only(holder: dict, key: str):
    """holder[key] (a message or a delta) without what the rules cannot check."""
    value = holder.get(key)
    if isinstance(value, dict) and not value.keys() <= _CHECKED:
        holder[key] = {k: v for k, v in value.items() if k in _CHECKED}


def _is_held(choice: dict) -> bool:
    """A choice left with no text (a window holds it), no finish, no logprobs, nothing else."""
    delta = choice.get("delta")
    return (isinstance(delta, dict) and bool(delta) and delta.keys() <= _TEXTS and not any(delta.values())
            and choice.keys() <= _CHOICE and not choice.get("finish_reason") and choice.get("logprobs") is None)


def _is_text(choice: dict) -> bool:
    """Only a piece of content: no tool calls, no finish, no logprobs, nothing else."""
    delta = choice.get("delta")
    return (type(delta) is dict and len(delta) == 1 and type(delta.get("content")) is str
            and choice.get("finish_reason") is None and choice.get("logprobs") is None and choice.keys() <= _CHOICE)


class GuardrailsPolicy(Policy):
    name = "guardrails"

    def __init__(self, snapshot=None):
        self.snapshot = snapshot or policies

    async def _state(self, ex: Exchange) -> GuardState:
        """The rules that apply to this request, read from the snapshot once (passthrough and request
        see the same ones: a refresh in between cannot make a native request skip redaction)."""
        state = ex.state.get("guardrails")
        if state is None:
            state = ex.state["guardrails"] = _state(ex, await self.snapshot.get())
        return state

    async def passthrough(self, ex: Exchange) -> bool:
        state = await self._state(ex)
        return not (state.prompt_rules or state.response_rules)

    async def request(self, ex: Exchange):
        state = await self._state(ex)
        prompt_rules = state.prompt_rules
        if not prompt_rules:
            return None
        call = ex.call
        try:
            state.prompt = verdict = _check(prompt_rules, prompt_slots(call.chat))
        finally:
            ex.trace.stage("guardrails")
        if verdict.block is not None:
            state.blocked_by = verdict.block.name
            ex.out["x-smartflow-compliance"] = "blocked"
            raise blocked(verdict.block)
        if any(verdict.send) and not call.is_native:  # the provider gets the redacted prompt
            base_url = settings.SMARTFLOW_BASE_URLS[call.route.provider]
            call.request.body = call.provider.build_request(call.chat, call.route.upstream_model, base_url, None).body
        if verdict.triggered:
            ex.out["x-smartflow-compliance"] = "flagged"
        return None

    def chunk(self, ex: Exchange, chunk: dict) -> dict | None:
        state = ex.state.get("guardrails")
        if state is None or not state.stream_rules:
            return chunk
        choices = chunk.get("choices") or ()
        try:
            if len(choices) == 1 and len(chunk) == 1 and _is_text(choices[0]):
                return self._text(state, chunk, choices[0])
            for choice in choices:
                if choice.get("logprobs") is not None:
                    choice["logprobs"] = None  # its tokens spell out what the window redacts
                _checked_only(choice, "delta")
                self._choice(state, choice)
        except Blocked as exc:
            state.blocked_by = exc.rule.name
            raise blocked(exc.rule) from None
        # A chunk whose whole text the windows hold has nothing left to say: held back (an empty
        # event per held delta would cost the gateway and the client a write each, for nothing).
        return None if choices and len(chunk) == 1 and all(map(_is_held, choices)) else chunk

    def _text(self, state: GuardState, chunk: dict, choice: dict) -> dict | None:
        """Most chunks: one choice's next piece of content and nothing else, fed to its window (what
        _choice does with it, without the tool-call and finish bookkeeping it cannot need)."""
        delta, key = choice["delta"], (choice.get("index", 0), "content")
        if not delta["content"] and key not in state.windows:
            return None
        released = self._window(state, key).feed(delta["content"])
        if not released:
            return None
        delta["content"] = released
        return chunk

    def _window(self, state: GuardState, key) -> Window:
        window = state.windows.get(key)
        if window is None:
            window = state.windows[key] = Window(state.stream_rules, state.stream_counts, state.stream_triggered,
                                                 state.heuristics)
        return window

    def _choice(self, state: GuardState, choice: dict):
        index, delta = choice.get("index", 0), choice.get("delta")
        if not isinstance(delta, dict):
            return
        calls = delta.get("tool_calls") or []
        finish = bool(choice.get("finish_reason"))
        for part in ("content", "refusal"):
            text = delta.get(part)
            if isinstance(text, str) and (text or (index, part) in state.windows):
                # The text ends where a tool call or the finish begins: release all that is held.
                delta[part] = self._window(state, (index, part)).feed(text, final=bool(calls) or finish)
            elif (calls or finish) and (index, part) in state.windows:
                delta[part] = self._window(state, (index, part)).feed("", final=True)
        flushed = []
        for position, call in enumerate(calls):
            slot = call.get("index", position)
            for (i, other), window in list(state.windows.items()):
                if i == index and other not in ("content", "refusal", slot) and window.buffer:
                    flushed.append({"index": other, "function": {"arguments": window.feed("", final=True)}})
            function = call.get("function")
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = self._window(state, (index, slot)).feed(function["arguments"], final=finish)
        if finish:
            for (i, other), window in state.windows.items():
                if i == index and other not in ("content", "refusal") and window.buffer:
                    flushed.append({"index": other, "function": {"arguments": window.feed("", final=True)}})
        if flushed:
            delta["tool_calls"] = flushed + calls if not finish else calls + flushed

    async def response(self, ex: Exchange, response: dict) -> None:
        state = ex.state.get("guardrails")
        if state is None or not state.response_rules or state.windows or (ex.call and ex.call.is_stream):
            return  # a stream was checked chunk by chunk
        state.response = verdict = _check(state.response_rules, answer_slots(response))
        if state.stream_rules:  # a redact or block rule: logprobs' tokens would spell out what it removes
            for choice in _dicts(response.get("choices")):
                if choice.get("logprobs") is not None:
                    choice["logprobs"] = None
                _checked_only(choice, "message")
        if verdict.block is not None:
            state.blocked_by = verdict.block.name
            ex.out["x-smartflow-compliance"] = "blocked"
            raise blocked(verdict.block)
        if verdict.triggered and ex.out.get("x-smartflow-compliance") != "blocked":
            ex.out["x-smartflow-compliance"] = "flagged"

    def log(self, ex: Exchange) -> None:
        state, trace = ex.state.get("guardrails"), ex.trace
        if state is None:  # the request failed before the policies ran (a bad header, no provider key)
            rules = self.snapshot.last()
            if rules is None:
                if trace.fields.get("prompt") is not None:
                    trace.set(prompt=masked(trace.fields["prompt"], _EVERY_ENTITY))
                return
            state = _state(ex, rules)
        if state is _EMPTY:
            trace.set(compliance="pass", guardrails={"policies": [], "pii": [], "risk_score": 0.0})
            return
        if state.prompt is None and state.prompt_rules and isinstance(trace.fields.get("prompt"), list):
            # Its prompt is in the VASLog all the same: checked here, so no matched text is kept.
            slots = prompt_slots({"messages": trace.fields["prompt"]})
            state.prompt = R.evaluate(state.prompt_rules, [(h[k], untrusted) for h, k, untrusted in slots])
            if state.prompt.block is not None:
                state.blocked_by = state.prompt.block.name
        if ex.call is not None and ex.call.is_stream and state.response_rules:
            state.response = _stream_verdict(state, trace.fields.get("response"))
        sides = [(side, v) for side, v in (("prompt", state.prompt), ("response", state.response)) if v is not None]
        triggered = {(side, rule.name) for side, v in sides for rule in v.triggered}
        records = {}
        for rule in state.prompt_rules + state.response_rules:  # a rule on both sides is listed once
            hit = ("prompt", rule.name) in triggered or ("response", rule.name) in triggered
            records[rule.name] = {"name": rule.name, "action": rule.action, "triggered": hit}
        found = [{"type": kind, "where": side, "action": action, "count": count}
                 for side, v in sides for (kind, action), count in sorted(v.counts.items())]
        fields = {"compliance": "blocked" if state.blocked_by else "flagged" if triggered else "pass",
                  "guardrails": {"policies": list(records.values()), "pii": found,
                                 "risk_score": R.risk_score([v for _, v in sides])}}
        # The VASLog keeps no matched text: every match of every triggered rule, flag included.
        if state.prompt is not None and state.prompt.triggered:
            fields["prompt"] = masked(trace.fields.get("prompt"), state.prompt.triggered)
        if state.response is not None and state.response.triggered and trace.fields.get("response") is not None:
            fields["response"] = masked(trace.fields["response"], state.response.triggered)
        trace.set(**fields)


def _stream_verdict(state: GuardState, answer) -> R.Verdict:
    """A stream's response verdict: what its windows found (redact and block rules), and what the
    flag rules, which hold nothing back, find in the answer as it went out."""
    flags = [r for r in state.response_rules if r.action == "flag"]
    verdict = _check(flags, answer_slots(answer)) if flags and isinstance(answer, dict) else R.Verdict()
    for key, count in state.stream_counts.items():
        verdict.counts[key] = verdict.counts.get(key, 0) + count
    verdict.triggered += [r for r in state.stream_rules if r.name in state.stream_triggered]
    return verdict
