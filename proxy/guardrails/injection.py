"""Prompt-injection heuristics: each pattern names a known attack and carries a weight; the
weights of the distinct heuristics that hit combine into the text's injection score
(1 - prod(1 - w)), and the policy triggers at INJECTION_THRESHOLD. All patterns are RE2, bounded."""
from __future__ import annotations

import base64
import binascii

_S = r"[\s,]{1,4}"
_OBJ = r"(?:instructions?|rules|prompts?|directions|guidelines|guardrails|context|constraints|programming)"
PATTERNS = {
    # "Ignore all previous instructions", "disregard the rules above" ...
    "IGNORE": (0.8, r"(?i)\b(?:ignore|disregard|forget|override|bypass|skip|drop)" + _S
               + r"(?:(?:all|any|the|your|my|these|those|every|of|previous|prior|above|earlier|preceding|"
               r"original|initial|system|safety|developer)" + _S + r"){1,4}" + _OBJ),
    # "Reveal your system prompt", "print the hidden instructions" ...
    "REVEAL": (0.7, r"(?i)\b(?:reveal|show|print|repeat|output|display|leak|dump|disclose|give|tell)" + _S
               + r"(?:me" + _S + r")?(?:your|the|all)" + _S + r"(?:(?:initial|original|hidden|secret|full|"
               r"exact|entire|system|developer)" + _S + r"){0,3}(?:prompt|instructions|system message)"),
    # Role-play jailbreaks: "you are now DAN", "pretend you have no restrictions" ...
    "ROLEPLAY": (0.7, r"(?i)\b(?:you are now|you're now|from now on,? you(?: are|'re| will be)|pretend(?: to be| you are| that you)?|"
                 r"act as|roleplay as|role-play as|imagine you are)\b[^.\n]{0,80}?(?:\bDAN\b|unfiltered|"
                 r"uncensored|jailbroken|unrestricted|without (?:any )?(?:restrictions|limits|rules|filters|"
                 r"guidelines)|no (?:restrictions|limits|rules|filters|guidelines)|evil)"),
    "JAILBREAK": (0.6, r"(?i)\b(?:do anything now|developer mode|DAN mode|god mode|jailbreak(?:ed|ing)?)\b"),
    # Chat-template tokens and fake system turns smuggled into user text.
    "DELIMITER": (0.5, r"(?i)<\|(?:im_start|im_end|system|endoftext)\|>|\[/?(?:system|INST)\]|"
                  r"</?system>|(?m:^)#{2,3} ?system\b"),
    # An encoded payload (base64); decoded and checked again, see encoded().
    "ENCODED": (0.3, r"\b[A-Za-z0-9+/]{40,252}={0,2}"),
}
INJECTION_THRESHOLD = 0.5
ENCODED_INSTRUCTIONS = 0.9  # a payload that decodes to one of the attacks above


def weight(kind: str) -> float:
    return PATTERNS[kind][0]


def decode(text: str) -> str | None:
    """The text a base64 payload carries, if it is mostly printable text (not an image or a key)."""
    try:
        raw = base64.b64decode(text[: len(text) // 4 * 4], validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as err:  # binary (an image, a key), unless only its last character is cut
        if err.start < len(raw) - 3:
            return None
        decoded = raw[:err.start].decode("utf-8")
    printable = sum(c.isprintable() or c.isspace() for c in decoded)
    return decoded if decoded and printable >= 0.95 * len(decoded) and " " in decoded else None


def score(kinds: dict[str, float]) -> float:
    """kinds: heuristic -> its weight in this text; the combined score 0..1."""
    remaining = 1.0
    for w in kinds.values():
        remaining *= 1 - w
    return round(1 - remaining, 3)
