"""Guardrail policies as the gateway applies them: validated, compiled once per config snapshot.

A Rule finds its matches in a text; evaluate() runs the rules for one side (prompt or response)
of a request over its texts and says what to block, what to redact before it is sent, and what
to mask in the VASLog (every match of every triggered rule, flag included)."""
from __future__ import annotations

import re._parser as re_parser
from dataclasses import dataclass, field

import re2

from . import injection
from .scan import INJECTION, MAX_SPAN, PII_ENTITIES, SPANS, Finding, scan, spans

KINDS = ("pii", "injection", "regex", "keywords")
ACTIONS = ("flag", "redact", "block")
SIDES = ("prompt", "response", "both")
NAME_MAX = 100
PATTERN_MAX = 2000
WORDS_MAX = 500
# How much each finding weighs in the risk score (regex and keywords: CUSTOM).
SEVERITY = {"API_KEY": 0.9, "CREDIT_CARD": 0.8, "US_SSN": 0.8, "IBAN_CODE": 0.7, "PHONE_NUMBER": 0.4,
            "EMAIL_ADDRESS": 0.3, "IP_ADDRESS": 0.2, "CUSTOM": 0.5}
ACTION_SEVERITY = {"flag": 0.0, "redact": 0.1, "block": 0.2}


_QUIET = re2.Options()
_QUIET.log_errors = False  # a bad pattern is the caller's 400, not a line on stderr


class Invalid(ValueError):
    """A policy body the gateway refuses; field names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _strings(value, field: str, limit: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(field, "a list of strings is expected.")
    if len(value) > limit:
        raise Invalid(field, f"at most {limit} items.")
    if any("\x00" in v for v in value):
        raise Invalid(field, "NUL characters are not allowed.")
    return [v.strip() for v in value]


def validate(body) -> dict:
    """A policy body -> the cleaned policy; raises Invalid naming the field."""
    if not isinstance(body, dict):
        raise Invalid("body", "a JSON object is expected.")
    unknown = set(body) - {"name", "kind", "entities", "pattern", "words", "action", "on", "teams", "enabled"}
    if unknown:
        raise Invalid(sorted(unknown)[0], "unknown field.")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX or "\x00" in name \
            or not all(c.isalnum() or c in "-_." for c in name):
        raise Invalid("name", f"1 to {NAME_MAX} letters, digits, '-', '_' or '.'.")
    kind = body.get("kind")
    if kind not in KINDS:
        raise Invalid("kind", f"one of {', '.join(KINDS)}.")
    action = body.get("action", "flag")
    if action not in ACTIONS:
        raise Invalid("action", f"one of {', '.join(ACTIONS)}.")
    on = body.get("on", "prompt")
    if on not in SIDES:
        raise Invalid("on", f"one of {', '.join(SIDES)}.")
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        raise Invalid("enabled", "true or false.")
    teams = [t for t in _strings(body.get("teams", []), "teams", 1000) if t]
    entities = [e.upper() for e in _strings(body.get("entities", []), "entities", 50)]
    unknown_entities = [e for e in entities if e not in PII_ENTITIES]
    if unknown_entities:
        raise Invalid("entities", f"unknown entity {unknown_entities[0]!r}; known: {', '.join(PII_ENTITIES)}.")
    if entities and kind != "pii":
        raise Invalid("entities", "only a pii policy has entities.")
    pattern = body.get("pattern") or ""
    words = body.get("words", [])
    if kind == "regex":
        if not isinstance(pattern, str) or not pattern or len(pattern) > PATTERN_MAX or "\x00" in pattern:
            raise Invalid("pattern", f"a regular expression of 1 to {PATTERN_MAX} characters is required.")
        try:
            compiled = re2.compile(pattern, options=_QUIET)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            raise Invalid("pattern", f"not a linear-time (RE2) regular expression: {reason}") from None
        if compiled.search(""):
            raise Invalid("pattern", "it matches the empty string.")
        if _ANY_BYTE.search(pattern):  # a match could end inside a character: its offsets would mean nothing
            raise Invalid("pattern", r"\C (any byte) can match part of a character: use . (any character).")
    elif pattern:
        raise Invalid("pattern", "only a regex policy has a pattern.")
    words = [w for w in _strings(words, "words", WORDS_MAX) if w]
    if kind == "keywords" and not words:
        raise Invalid("words", "at least one keyword is required.")
    if kind != "keywords" and words:
        raise Invalid("words", "only a keywords policy has words.")
    if any(len(w) > MAX_SPAN for w in words):
        raise Invalid("words", f"a keyword is at most {MAX_SPAN} characters.")
    return {"name": name.strip(), "kind": kind, "entities": entities, "pattern": pattern, "words": words,
            "action": action, "on": on, "teams": teams, "enabled": enabled}


_ANY_BYTE = re2.compile(r"(?:^|[^\\])(?:\\\\)*\\C")  # \C, not an escaped backslash before a C


def _any_character(pattern: str) -> str:
    r"""The pattern with each \C (any byte) read as any character: validate() refuses \C, but a policy
    stored before it did would raise on the first prompt a match ends inside a character of."""
    if "\\C" not in pattern:
        return pattern
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            if pattern[i + 1] == "Q":  # \Q...\E is literal text: kept as it is
                end = pattern.find("\\E", i + 2)
                end = len(pattern) if end < 0 else end + 2
                out.append(pattern[i:end])
                i = end
                continue
            out.append("(?s:.)" if pattern[i + 1] == "C" else pattern[i:i + 2])
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


def _longest(pattern: str) -> int:
    """The longest text the pattern can match, capped at MAX_SPAN (what a stream holds back). Python's
    parser reads "{,n}" as 0 to n repeats, RE2 as the literal text: where they may differ, the cap."""
    if "{," in pattern:
        return MAX_SPAN
    try:
        return min(MAX_SPAN, max(1, re_parser.parse(pattern).getwidth()[1]))
    except Exception:  # RE2 syntax Python's parser lacks: assume the cap
        return MAX_SPAN


def _keywords(words: list[str]) -> str:
    # Longest first, so "category" wins over "cat"; whole words are checked after (RE2's \b is ASCII).
    return "(?i)(?:" + "|".join(re2.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _whole_word(text: str, start: int, end: int) -> bool:
    """No letter or digit glued to either end of a keyword that begins or ends with one."""
    before = start > 0 and _word(text[start - 1]) and _word(text[start])
    after = end < len(text) and _word(text[end]) and _word(text[end - 1])
    return not (before or after)


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    action: str
    on: str
    entities: frozenset = frozenset()
    teams: frozenset = frozenset()
    pattern: object = None  # regex and keywords: the compiled RE2 pattern
    span: int = MAX_SPAN  # the longest match (a stream holds back this many characters)

    @classmethod
    def compile(cls, policy: dict) -> "Rule":
        kind = policy["kind"]
        entities = frozenset(policy["entities"] or PII_ENTITIES)
        pattern, span = None, SPANS[INJECTION]
        if kind == "pii":
            span = max(SPANS[e] for e in entities)
        elif kind == "regex":
            source = _any_character(policy["pattern"])
            pattern, span = re2.compile(source), _longest(source)
        elif kind == "keywords":
            pattern, span = re2.compile(_keywords(policy["words"])), max(len(w) for w in policy["words"])
        return cls(policy["name"], kind, policy["action"], policy["on"], entities, frozenset(policy["teams"]),
                   pattern, span)

    def applies(self, team: str | None, side: str) -> bool:
        return self.on in (side, "both") and (not self.teams or team in self.teams)

    def matches(self, text: str, found: list[Finding]) -> list[Finding]:
        if self.kind == "pii":
            return [f for f in found if f.entity in self.entities]
        if self.kind == "injection":
            return [f for f in found if f.entity == INJECTION]
        if self.kind == "regex":
            return [Finding(start, end, self.name, 1.0) for _, start, end in spans(self.pattern, text) if end > start]
        # A keyword inside a longer word is searched past from its next character, not its end: it
        # must not hide a keyword that overlaps it ("xa b" hiding "b c" in "xa b c").
        whole = spans(self.pattern, text, lambda _, start, end: _whole_word(text, start, end) or None)
        return [Finding(start, end, self.name, 1.0) for start, end, _ in whole]


@dataclass
class Verdict:
    """What the rules found on one side of a request."""

    triggered: list[Rule] = field(default_factory=list)
    block: Rule | None = None
    send: list[list[Finding]] = field(default_factory=list)  # per text: the matches redacted when sent
    counts: dict = field(default_factory=dict)  # (type, action) -> count
    injection: float = 0.0


def _needs_scan(rules) -> bool:
    return any(r.kind in ("pii", "injection") for r in rules)


def evaluate(rules: list[Rule], texts: list[tuple[str, bool]]) -> Verdict:
    """texts: (text, may_carry_injection) — injection heuristics skip the system prompt, which is
    the operator's own (it often says "never reveal your system prompt")."""
    verdict = Verdict(send=[[] for _ in texts])
    scanned = [scan(text) if _needs_scan(rules) else [] for text, _ in texts]
    for rule in rules:
        hits = []
        for i, (text, untrusted) in enumerate(texts):
            if rule.kind == "injection" and not untrusted:
                continue
            hits.extend((i, f) for f in rule.matches(text, scanned[i]))
        if rule.kind == "injection":
            score = injection.score({f.heuristic: f.score for _, f in hits}) if hits else 0.0
            verdict.injection = max(verdict.injection, score)
            if score < injection.INJECTION_THRESHOLD:
                continue
        if not hits:
            continue
        verdict.triggered.append(rule)
        if rule.action == "block" and verdict.block is None:
            verdict.block = rule
        if rule.action == "redact":
            for i, f in hits:
                verdict.send[i].append(f)
        for _, f in hits:
            kind = f.entity
            verdict.counts[(kind, rule.action)] = verdict.counts.get((kind, rule.action), 0) + 1
    return verdict


def _kept(findings: list[Finding]) -> list[Finding]:
    """The findings in order, an overlapping one dropped (the earlier wins)."""
    kept, at = [], 0
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if f.start >= at:
            kept.append(f)
            at = f.end
    return kept


def replace(text: str, findings: list[Finding]) -> str:
    """text with each finding replaced by its <ENTITY>; overlapping findings: the earlier one wins."""
    return replace_parts([text], findings)[0] if findings else text


def replace_parts(texts: list[str], findings: list[Finding]) -> list[str]:
    """Texts a provider reads joined (a message's content parts), redacted from the findings in the
    joined text: a match across parts leaves its <ENTITY> in the part it starts in, and removes its
    rest from the parts after."""
    kept, k, out, offset = _kept(findings), 0, [], 0
    for text in texts:
        end, pieces, at = offset + len(text), [], offset
        while k < len(kept) and kept[k].start < end:
            f = kept[k]
            pieces += [text[at - offset:f.start - offset] if f.start >= at else "",
                       f"<{f.entity}>" if f.start >= offset else ""]
            at = min(f.end, end)
            if f.end > end:
                break  # it goes on in the next part
            k += 1
        pieces.append(text[at - offset:])
        out.append("".join(pieces))
        offset = end
    return out


def mask(text: str, rules: list[Rule]) -> str:
    """Every match of the rules replaced: what the VASLog keeps."""
    return mask_parts([text], rules)[0]


def mask_parts(texts: list[str], rules: list[Rule]) -> list[str]:
    """mask() for texts read joined: a match across two parts is found, and masked in both."""
    text = "".join(texts)
    found = scan(text) if _needs_scan(rules) else []
    return replace_parts(texts, [f for rule in rules for f in rule.matches(text, found)])


def risk_score(verdicts: list[Verdict]) -> float:
    """1 - prod(1 - severity) over every finding: more findings and worse ones score higher;
    injection counts with its own score, a block or redact action adds a little."""
    remaining = 1.0
    for verdict in verdicts:
        for (kind, action), count in verdict.counts.items():
            if kind == INJECTION:
                continue
            severity = min(0.99, SEVERITY.get(kind, SEVERITY["CUSTOM"]) + ACTION_SEVERITY[action])
            remaining *= (1 - severity) ** min(count, 10)
        if verdict.injection and any(r.kind == "injection" for r in verdict.triggered):
            remaining *= 1 - verdict.injection
    return round(1 - remaining, 3)
