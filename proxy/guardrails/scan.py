"""One linear-time pass over a text for every built-in entity and injection heuristic.

All patterns are alternatives of one RE2 expression (RE2 matches in time linear in the text,
never backtracking: the catastrophic-regex freeze LiteLLM had cannot happen); each candidate is
then validated and scored by its recogniser. Alternatives earlier in the expression win at the
same position, so the most specific shapes (secrets, e-mails, IBANs) come first."""
from __future__ import annotations

import re._parser as re_parser
from dataclasses import dataclass

import re2

from . import injection, pii, secrets

MIN_SCORE = 0.5  # a PII candidate counts from this score on (a context word can lift it there)
MAX_SPAN = 256  # the longest built-in match but a PEM block (a stream holds back this much)
PII_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "API_KEY")
INJECTION = "PROMPT_INJECTION"


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    entity: str  # a PII entity, PROMPT_INJECTION, or a regex/keywords policy's name
    score: float
    heuristic: str = ""  # injection: which heuristic


def _alternatives() -> list[tuple[str, str]]:
    groups = [(f"K_{name}", p) for name, p in secrets.PATTERNS.items()]
    groups += [(f"P_{name}", p) for name, p in pii.PATTERNS.items() if name in ("EMAIL_ADDRESS", "IBAN_CODE")]
    groups += [(f"I_{name}", p) for name, (_, p) in injection.PATTERNS.items() if name != "ENCODED"]
    groups += [(f"P_{name}", p) for name, p in pii.PATTERNS.items() if name not in ("EMAIL_ADDRESS", "IBAN_CODE")]
    groups.append(("I_ENCODED", injection.PATTERNS["ENCODED"][1]))
    return groups


def _longest(pattern: str) -> int:
    return re_parser.parse(pattern).getwidth()[1]


# The longest match of each entity (a stream holds back this much for a rule on it): every pattern
# is bounded, but a private key block, held from its BEGIN line to its END line instead.
SPANS = {name: _longest(p) for name, p in pii.PATTERNS.items()}
SPANS["API_KEY"] = max(_longest(p) for name, p in secrets.PATTERNS.items() if name != "PEM")
SPANS[INJECTION] = max(_longest(p) for _, p in injection.PATTERNS.values())
assert max(SPANS.values()) <= MAX_SPAN, SPANS

_OPTIONS = re2.Options()
_OPTIONS.max_mem = 64 << 20  # the combined DFA is large; the default 8 MiB would make RE2 fall back to NFA
COMBINED = re2.compile("|".join(f"(?P<{name}>{p})" for name, p in _alternatives()), options=_OPTIONS)
# Every capturing group is one alternative (the patterns use only (?:…) inside): lastindex names it.
_GROUP_NAMES = {index: name for name, index in COMBINED.groupindex.items()}
_INJECTION_ONLY = re2.compile("|".join(f"(?P<{n}>{p})" for n, (_, p) in injection.PATTERNS.items() if n != "ENCODED"))


def _context_boost(entity: str, before: str) -> float:
    before = before.lower()
    return pii.CONTEXT_BOOST if any(word in before for word in pii.CONTEXT.get(entity, ())) else 0.0


def spans(pattern, text: str):
    """(group index, start, end) of each match of an RE2 pattern, in characters. RE2 runs on UTF-8
    bytes: handing it bytes is twice as fast as a str (whose offsets the binding converts match by
    match); outside ASCII, byte offsets become character offsets by decoding the gaps, once, front
    to back (RE2 matches whole code points, so every offset is on a character boundary)."""
    data = text.encode("utf-8", "surrogatepass")
    ascii = len(data) == len(text)
    at_byte = at_char = 0
    for match in pattern.finditer(data):
        start, end = match.span()
        if not ascii:
            at_char += len(data[at_byte:start].decode("utf-8", "surrogatepass"))
            at_byte = start
            start, end = at_char, at_char + len(data[start:end].decode("utf-8", "surrogatepass"))
        yield match.lastindex, start, end


def scan(text: str) -> list[Finding]:
    """Every built-in finding in text, in order, none overlapping."""
    found = []
    for index, start, end in spans(COMBINED, text):
        group, value = _GROUP_NAMES[index], text[start:end]
        kind, name = group[0], group[2:]
        if kind == "I":
            weight = injection.weight(name)
            if name == "ENCODED":
                decoded = injection.decode(value)
                if decoded is None:
                    continue
                if _INJECTION_ONLY.search(decoded):
                    weight = injection.ENCODED_INSTRUCTIONS
            found.append(Finding(start, end, INJECTION, weight, name))
            continue
        before, after = text[max(0, start - pii.CONTEXT_CHARS):start], text[end:end + 2]
        if kind == "K":
            score, entity = secrets.api_key(value, before, after), "API_KEY"
        else:
            score, entity = pii.CHECKS[name](value, before, after), name
        if score <= 0:
            continue
        score = min(1.0, score + _context_boost(entity, before)) if score < 1 else score
        if score >= MIN_SCORE:
            found.append(Finding(start, end, entity, round(score, 3)))
    return found
