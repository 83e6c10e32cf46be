"""One linear-time pass over a text for every built-in entity and injection heuristic.

All patterns are alternatives of one RE2 expression (RE2 matches in time linear in the text,
never backtracking: the catastrophic-regex freeze LiteLLM had cannot happen); each candidate is
then validated and scored by its recogniser. Alternatives earlier in the expression win at the
same position, so the most specific shapes (secrets, e-mails, IBANs) come first."""
from __future__ import annotations

import re._parser as re_parser
from dataclasses import dataclass

import re2
from re2 import _re2

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
# Secrets and PII in one expression, the injection heuristics in another, base64 runs in a third: a
# long candidate of one (a base64-looking URL path) then never hides a match of another (a key at the
# path's end), and the base64 run's counted repeat does not blow up the others' DFA (random base64:
# 30 ms per 100 kB in one expression, 2 ms alone).
VALUES = re2.compile("|".join(f"(?P<{n}>{p})" for n, p in _alternatives() if n[0] != "I"), options=_OPTIONS)
INJECTIONS = re2.compile("|".join(f"(?P<{n}>{p})" for n, p in _alternatives() if n[0] == "I" and n != "I_ENCODED"),
                         options=_OPTIONS)
ENCODED = re2.compile(f"(?P<I_ENCODED>{injection.PATTERNS['ENCODED'][1]})", options=_OPTIONS)
# Every capturing group is one alternative (the patterns use only (?:…) inside): lastindex names it.
_GROUP_NAMES = {pattern: {index: name for name, index in pattern.groupindex.items()}
                for pattern in (VALUES, INJECTIONS, ENCODED)}
_INJECTION_ONLY = re2.compile("|".join(f"(?P<{n}>{p})" for n, (_, p) in injection.PATTERNS.items() if n != "ENCODED"))
# A rejected candidate is searched again from its next character (it may hide a shorter match of
# another entity: a card inside a phone-shaped run), as long as the rescanned characters stay
# within this many times the text: linear whatever the text.
RESCAN = 4


def _context_boost(entity: str, before: str) -> float:
    before = before.lower()
    return pii.CONTEXT_BOOST if any(word in before for word in pii.CONTEXT.get(entity, ())) else 0.0


_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)


def _first_group(found: list) -> int | None:
    for index in range(1, len(found)):
        if found[index] != _NO_MATCH:
            return index
    return None


def spans(pattern, text: str, check=None, rescan: bool = True):
    """(group index, start, end) of each match of an RE2 pattern, in characters; with check, (start,
    end, check's result) of each match check(index, start, end) accepts, a rejected one searched
    again from its next character (rescan). The group index is the first group that took part (in
    the built-in patterns, each alternative is one group). RE2 runs on UTF-8 bytes: handing it bytes
    is twice as fast as a str (whose offsets the binding converts match by match); outside ASCII,
    byte offsets become character offsets by decoding the gaps, once, front to back (RE2 matches
    whole code points, so every offset is on a character boundary). The binding's compiled RE2 is
    called directly: its search() wraps each call in a generator and a match object, which cost
    more than RE2 takes to scan a short prompt (google-re2 is pinned; a test holds the two alike)."""
    data = text.encode("utf-8", "surrogatepass")
    ascii = len(data) == len(text)
    at_byte = at_char = pos = 0
    budget = RESCAN * len(data) + MAX_SPAN
    match_at, size = pattern._regexp.Match, len(data)
    while pos <= size:
        found = match_at(_UNANCHORED, data, pos, size)
        if found[0] == _NO_MATCH:
            return
        start, end = found[0]
        match_start, match_end = start, end
        if not ascii:
            at_char += len(data[at_byte:start].decode("utf-8", "surrogatepass"))
            at_byte = start
            start, end = at_char, at_char + len(data[at_byte:end].decode("utf-8", "surrogatepass"))
        if check is None:
            yield _first_group(found), start, end
        else:
            result = check(_first_group(found), start, end)
            if result is None and rescan and budget > 0:
                budget -= match_end - match_start
                pos = match_start + 1
                while pos < size and data[pos] & 0xC0 == 0x80:  # the next character, not the next byte
                    pos += 1
                continue
            if result is not None:
                yield start, end, result
        pos = match_end if match_end > match_start else match_end + 1


def _value(text: str, group: str, start: int, end: int) -> Finding | None:
    value, before, after = text[start:end], text[max(0, start - pii.CONTEXT_CHARS):start], text[end:end + 2]
    if group[0] == "K":
        score, entity = secrets.api_key(value, before, after), "API_KEY"
    else:
        score, entity = pii.CHECKS[group[2:]](value, before, after), group[2:]
    if score <= 0:
        return None
    score = min(1.0, score + _context_boost(entity, before)) if score < 1 else score
    return Finding(start, end, entity, round(score, 3)) if score >= MIN_SCORE else None


def _injection(text: str, name: str, start: int, end: int) -> Finding | None:
    weight = injection.weight(name)
    if name == "ENCODED":
        decoded = injection.decode(text[start:end])
        if decoded is None:
            return None
        if _INJECTION_ONLY.search(decoded):
            weight = injection.ENCODED_INSTRUCTIONS
    return Finding(start, end, INJECTION, weight, name)


def scan(text: str) -> list[Finding]:
    """Every built-in finding in text, in order: secrets and PII none overlapping, injection
    heuristics apart from them (they may overlap a value)."""
    names = _GROUP_NAMES[VALUES]
    found = [f for _, _, f in spans(VALUES, text, lambda i, s, e: _value(text, names[i], s, e))]
    injections = []
    for pattern in (INJECTIONS, ENCODED):  # not searched again inside a rejected base64 run: nothing else fits in one
        names = _GROUP_NAMES[pattern]
        injections += [f for _, _, f in spans(pattern, text, lambda i, s, e: _injection(text, names[i][2:], s, e),
                                              rescan=False)]
    return sorted(found + injections, key=lambda f: (f.start, f.end)) if injections else found
