"""Provider keys are scrubbed from trace errors and from every log record (pure)."""
import logging
import sys

import pytest

from proxy.scrub import REDACTED, ScrubSecrets, describe, scrub


@pytest.fixture
def stored_key(settings):
    settings.SMARTFLOW_PROVIDER_KEYS = {"ollama": "plain-ollama-cloud-secret"}
    return "plain-ollama-cloud-secret"


@pytest.mark.parametrize("text,secret", [
    ("RequestInfo(headers=<CIMultiDictProxy('x-api-key': 'abc123def456')>)", "abc123def456"),
    ("{'Authorization': 'Bearer tok_live_999'}", "tok_live_999"),
    ("authorization=Bearer tok_live_999;", "tok_live_999"),
    ("GET /v1beta/models/x?key=AIzaSyA-1234567890abcdef", "AIzaSyA-1234567890abcdef"),
    ("x-goog-api-key: goog-secret-1", "goog-secret-1"),
    ("failed with sk-proj-abcdefghijklmnop", "sk-proj-abcdefghijklmnop"),
    ("anthropic said: sk-ant-api03-xyzxyzxyz", "sk-ant-api03-xyzxyzxyz"),
])
def test_it_scrubs_anything_shaped_like_a_key(text, secret):
    clean = scrub(text)
    assert secret not in clean and REDACTED in clean


def test_it_scrubs_the_stored_keys_whatever_their_shape(stored_key):
    assert stored_key not in scrub(f"upstream refused {stored_key} at 12:00")
    assert scrub("nothing secret here, key points: none") == "nothing secret here, key points: none"


def test_a_trace_error_is_the_type_and_the_scrubbed_message(stored_key):
    class Leaky(Exception):
        def __repr__(self):
            return f"Leaky(headers={{'x-api-key': '{stored_key}'}})"

    assert describe(Leaky(f"boom {stored_key}")) == f"Leaky: boom {REDACTED}"
    assert describe(Leaky()) == "Leaky"

    class Broken(Exception):
        def __str__(self):
            raise ValueError("no")

    assert describe(Broken()) == "Broken"


def test_the_filter_scrubs_message_args_and_exception_in_place(stored_key):
    try:
        raise RuntimeError(f"call failed: {{'x-api-key': '{stored_key}'}}")
    except RuntimeError:
        record = logging.LogRecord("proxy", logging.ERROR, __file__, 1, "calling with %s (%r)",
                                   (stored_key, {"authorization": f"Bearer {stored_key}"}), sys.exc_info())
    assert ScrubSecrets().filter(record) is True
    formatted = logging.Formatter().format(record)
    assert stored_key not in formatted and "RuntimeError: call failed" in formatted
    assert record.exc_info is None and record.args is None


def test_the_console_handler_carries_the_filter():
    root = logging.getLogger()
    assert any(isinstance(f, ScrubSecrets) for h in root.handlers for f in h.filters)


def test_a_record_that_cannot_be_formatted_does_not_break_logging():
    record = logging.LogRecord("proxy", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert ScrubSecrets().filter(record) is True and record.getMessage() == "(unloggable record)"
