"""The sliding window a streamed text passes through when a redact or block rule watches it.

Everything but the last `hold` characters (the longest match a rule can make) is released,
redacted, in steps of up to 64 characters (never more than 256 held); a match that might still grow is held whole, and an open private key block is
held from its BEGIN line to its END line. Checking each chunk alone would leak a value split
across two chunks (LiteLLM's bug); this never releases a character a later match could include."""
from __future__ import annotations

import re2

from . import injection, secrets
from .rules import Rule, replace
from .scan import INJECTION, MAX_SPAN, scan

_PEM_END = re2.compile(secrets.PEM_END)
# API keys are checked to hold a digit (api_key()); e-mails an '@', IPv6 a ':', the rest digits.
# Looked for with str's own search, not RE2: ~2 µs for a window's text, where an RE2 call costs ~7
# on bytes and ~15 on a str (the binding maps its offsets).
_TRIGGERS = tuple("0123456789@:")


def _may_hold_pii(text: str) -> bool:
    """Whether text has a character every PII and secret match has: a digit, '@', ':' or '-----'."""
    return "-----" in text or any(c in text for c in _TRIGGERS)

CONTEXT_KEEP = 64
# Characters held beyond a match's span so one scan covers several small chunks, within the
# contract's 256: per 4-character chunk the window costs ~1 µs instead of ~15 (bench/guardrails.py),
# which keeps a guarded stream's throughput near an unguarded one's.
BATCH = 64


def _private_key_header(text: str, begin: int) -> bool:
    """Whether the BEGIN line at begin opens a private key (or is not complete yet)."""
    header = text[begin + len(secrets.PEM_BEGIN):begin + len(secrets.PEM_BEGIN) + 60]
    end = header.find("-----")
    return end < 0 or header[:end].endswith("PRIVATE KEY")


def _open_private_key(text: str) -> int:
    """Where the first private key block without its END line begins (-1: none). The first, not the
    last BEGIN: a certificate inside an open key block must not release the key's body."""
    begin = text.find(secrets.PEM_BEGIN)
    while begin >= 0:
        if not _private_key_header(text, begin):
            begin = text.find(secrets.PEM_BEGIN, begin + 1)
            continue
        end = _PEM_END.search(text, begin)
        if end is None:
            return begin
        begin = text.find(secrets.PEM_BEGIN, end.end())
    return -1


class Blocked(Exception):
    def __init__(self, rule: Rule):
        super().__init__(rule.name)
        self.rule = rule


class Window:
    def __init__(self, rules: list[Rule], record: dict, triggered: set, heuristics: dict):
        self.rules = rules
        self.hold = max(rule.span for rule in rules)
        # Never more than MAX_SPAN (256) held, the batch included.
        self.batch = max(0, min(BATCH, MAX_SPAN - self.hold))
        self.scans = any(rule.kind in ("pii", "injection") for rule in rules)
        self.digits_only = all(rule.kind == "pii" for rule in rules)
        # Shared with the other windows of the answer: counts by (type, action), rules triggered.
        self.record, self.triggered, self.heuristics = record, triggered, heuristics
        self.buffer = ""
        self.context = ""

    def feed(self, text: str, final: bool = False) -> str:
        """The text that can go out now, redacted; raises Blocked for a block rule's match."""
        self.buffer += text
        if not self.buffer or (not final and len(self.buffer) <= self.hold + self.batch):
            return ""  # nothing to release yet (or not enough to be worth a scan)
        base = len(self.context)
        whole = self.context + self.buffer
        cut = len(whole) if final else max(base, len(whole) - self.hold)
        if not final:
            begin = _open_private_key(self.buffer)
            if begin >= 0:
                cut = min(cut, base + begin)
        if self.digits_only and not _may_hold_pii(whole):
            hits = []  # every PII and secret match has a digit, '@', ':' or '-----' in it
        else:
            found = scan(whole) if self.scans else []
            hits = [(rule, f) for rule in self.rules for f in rule.matches(whole, found) if f.start >= base]
        moved = True
        while moved:  # a match that reaches past the cut might grow: hold it whole
            moved = False
            for _, f in hits:
                if f.start < cut < f.end:
                    cut, moved = f.start, True
        redacted = []
        for rule, f in hits:
            if f.end > cut:
                continue
            if rule.kind == "injection":
                self.heuristics[f.heuristic] = f.score
                if injection.score(self.heuristics) < injection.INJECTION_THRESHOLD:
                    continue
            self.triggered.add(rule.name)
            key = (f.entity if rule.kind != "injection" else INJECTION, rule.action)
            self.record[key] = self.record.get(key, 0) + 1
            if rule.action == "block":
                raise Blocked(rule)
            if rule.action == "redact":
                redacted.append(f)
        released = whole[base:cut]
        out = replace(whole[:cut], redacted)[base:] if redacted else released
        self.context = (self.context + released)[-CONTEXT_KEEP:]
        self.buffer = whole[cut:]
        return out
