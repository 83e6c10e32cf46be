"""Keeps provider keys out of traces and log lines: the stored keys, and anything shaped like a key."""
import logging
import re

from django.conf import settings

from .keystore import provider_keys

REDACTED = "[redacted]"
# OpenAI/Anthropic/Smartflow "sk-...", Google "AIza..." keys wherever they appear.
_KEYS = re.compile(r"sk-[A-Za-z0-9_\-]{6,}|AIza[0-9A-Za-z_\-]{10,}")
# The value of a key header or field as a repr, a log line or a query string prints it
# ('x-api-key': '...', authorization=Bearer ..., ?key=...), and any bearer token.
_FIELDS = re.compile(r"(?i)\b(x-api-key|x-goog-api-key|api[-_]?key|authorization|key)(['\"]?\s*[:=]\s*['\"]?)"
                     r"(?:bearer\s+)?(?!\[redacted\])[^\s'\",;&)}\]]+")
_BEARER = re.compile(r"(?i)\bbearer\s+(?!\[redacted\])[^\s'\",;)}\]]+")
_SHORTEST_KEY = 8  # a shorter stored "key" would scrub ordinary words


def _stored_keys() -> set[str]:
    keys = set(settings.SMARTFLOW_PROVIDER_KEYS.values()) | set((provider_keys.last() or {}).values())
    return {key for key in keys if key and len(key) >= _SHORTEST_KEY}


def scrub(text: str) -> str:
    for key in _stored_keys():
        text = text.replace(key, REDACTED)
    text = _KEYS.sub(REDACTED, text)
    text = _FIELDS.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
    return _BEARER.sub(f"Bearer {REDACTED}", text)


def describe(err: BaseException, limit: int = 2000) -> str:
    """A failure for the trace: its type and scrubbed message, never its repr (an aiohttp
    error's repr carries the request headers, the provider key among them)."""
    try:
        message = str(err)
    except Exception:  # a broken __str__ must not hide the failure it describes
        message = ""
    name = type(err).__name__
    return (f"{name}: {scrub(message)}" if message else name)[:limit]


class ScrubSecrets(logging.Filter):
    """Scrubs every record's message, arguments and exception text in place, so each handler
    after this one (and any formatter) sees only the scrubbed record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            record.msg, record.args = scrub(message), None
            if record.exc_info:
                record.exc_text = record.exc_text or logging.Formatter().formatException(record.exc_info)
                record.exc_info = None  # the exception object itself still carries the secret
            if record.exc_text:
                record.exc_text = scrub(record.exc_text)
            if record.stack_info:
                record.stack_info = scrub(record.stack_info)
        except Exception:  # logging must never fail the code that logs
            record.msg, record.args, record.exc_info, record.exc_text = "(unloggable record)", None, None, None
        return True
