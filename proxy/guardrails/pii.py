"""PII recognisers after Presidio's (microsoft/presidio presidio-analyzer/presidio_analyzer/
predefined_recognizers): a bounded RE2 pattern finds candidates, a library check validates them
and sets the score (a pattern's base score, raised when a checksum passes, raised again by a
context word just before the match)."""
from __future__ import annotations

import functools
import ipaddress
import re

import phonenumbers
from phonenumbers import PhoneNumber
from stdnum import iban, luhn

# Each pattern's longest match is bounded, so a stream needs to hold back only that many characters.
PATTERNS = {
    # At most 178 characters (a 64-character local part, three domain labels of up to 42 and 22, a
    # TLD): the shorter the longest match, the less a stream holds back.
    "EMAIL_ADDRESS": r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,40}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,20}[A-Za-z0-9])?){0,2}\.[A-Za-z]{2,24}\b",
    "IBAN_CODE": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    "CREDIT_CARD": r"\b(?:[1-6]\d{3})(?:[ \-]?\d{3,4}){2}[ \-]?\d{1,5}(?:[ \-]?\d{1,3})?\b",
    "US_SSN": r"\b\d{3}[ \-.]?\d{2}[ \-.]?\d{4}\b",
    "IP_ADDRESS": r"\b(?:\d{1,3}\.){3}\d{1,3}\b|(?i:[0-9a-f]{0,4}:){2,7}(?i:[0-9a-f]{0,4})"
                  r"(?:(?:\.\d{1,3}){3}|\b)",
    # International (+CC), North American (NXX NXX XXXX), trunk-prefixed national (0…), French pairs,
    # and bare runs of 10+ digits (these need a context word: they are as often order numbers).
    "PHONE_NUMBER": r"\+\d{1,3}(?:[ \-.]?\(?\d{1,5}\)?){1,6}"
                    r"|(?:\b1[ \-.])?\(?\b\d{3}\)?[ \-.]?\d{3}[ \-.]\d{4}\b"
                    r"|\b0\d(?:[ .\-]\d{2}){4}\b"
                    r"|\(?\b0\d{1,4}\)?[ \-./]?\d{3,8}(?:[ \-]\d{2,8}){0,3}\b"
                    r"|\b\d{10,15}\b",
}
# Lower-case words that make a match likelier when they come just before it (Presidio's context).
CONTEXT = {
    "EMAIL_ADDRESS": ("email", "e-mail", "mail", "contact"),
    "IBAN_CODE": ("iban", "bank", "account", "transfer", "konto"),
    "CREDIT_CARD": ("card", "credit", "visa", "mastercard", "amex", "payment", "cc"),
    "US_SSN": ("ssn", "social security", "social-security", "ss#", "tax id"),
    "IP_ADDRESS": ("ip", "address", "host", "server", "ipv4", "ipv6"),
    "PHONE_NUMBER": ("phone", "tel", "telephone", "mobile", "cell", "call", "fax", "number", "contact",
                     "whatsapp", "téléphone", "telefon", "handy", "móvil", "ring"),
}
CONTEXT_BOOST = 0.35
CONTEXT_CHARS = 40
_DATE = re.compile(r"^\(?\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}$")
_VERSION_BEFORE = re.compile(r"(?:\bv|version\s?|release\s?)$", re.I)
# Without a country code: ten digits are North American; a leading 0 is a trunk prefix, tried here.
_TRUNK_CODES = tuple(phonenumbers.country_code_for_region(r) for r in ("GB", "DE", "FR", "NL", "AU", "IN", "BR", "JP"))


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _one_separator(text: str, allowed: str) -> bool:
    """All separators alike (1234-5678-…), or none: mixed ones are not how numbers are written."""
    seps = {c for c in text if not c.isdigit()}
    return len(seps) <= 1 and seps <= set(allowed)


def email(text: str, before: str, after: str) -> float:
    return 1.0 if "." in text.rsplit("@", 1)[1] else 0.0


def iban_code(text: str, before: str, after: str) -> float:
    return 1.0 if iban.is_valid(text) else 0.0


def credit_card(text: str, before: str, after: str) -> float:
    digits = _digits(text)
    if not 13 <= len(digits) <= 19 or not _one_separator(text, " -") or not luhn.is_valid(digits):
        return 0.0
    if len(set(digits)) == 1:
        return 0.0
    return 1.0


def us_ssn(text: str, before: str, after: str) -> float:
    digits = _digits(text)
    if len(digits) != 9 or not _one_separator(text, " -."):
        return 0.0
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area >= "900" or group == "00" or serial == "0000":
        return 0.0
    if len(set(digits)) == 1 or digits in ("123456789", "987654321", "078051120", "219099999"):
        return 0.0  # all one digit, counting, and the famous sample numbers
    if after[:1] in ("-", ".", "/") and after[1:2].isdigit():
        return 0.0  # part of a longer number
    return 0.5 if len(text) > 9 else 0.15  # undelimited nine digits are a weak hint on their own


def ip_address(text: str, before: str, after: str) -> float:
    if _VERSION_BEFORE.search(before):
        return 0.0
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return 0.0
    if address.version == 6 and text.count(":") < 2 or address.version == 6 and not any(c.isdigit() for c in text):
        return 0.0
    return 0.6


def phone_number(text: str, before: str, after: str) -> float:
    digits = _digits(text)
    if not 7 <= len(digits) <= 15 or _DATE.search(text) or after[:1] == ":" or before[-1:] in ("#", "/", "."):
        return 0.0
    if not _valid_phone(digits, text.startswith("+")):
        return 0.0
    if text.startswith("+"):
        return 0.75
    # Bare digits are as likely an order or account number; a context word decides.
    return 0.6 if len(digits) != len(text) else 0.3


@functools.lru_cache(maxsize=4096)
def _valid_phone(digits: str, international: bool) -> bool:
    """phonenumbers' metadata decides; numbers are built directly (no parse: it is the slow part)."""
    if international:
        try:
            return phonenumbers.is_valid_number(phonenumbers.parse("+" + digits, None))
        except phonenumbers.NumberParseException:
            return False
    if digits[0] == "0":  # a trunk prefix: the countries that write their numbers so
        return 9 <= len(digits) <= 12 and any(
            phonenumbers.is_valid_number(PhoneNumber(country_code=code, national_number=int(digits[1:])))
            for code in _TRUNK_CODES)
    national = digits[1:] if len(digits) == 11 and digits[0] == "1" else digits
    return (len(national) == 10 and national[0] in "23456789" and national[3] in "23456789"
            and phonenumbers.is_valid_number(PhoneNumber(country_code=1, national_number=int(national))))


CHECKS = {"EMAIL_ADDRESS": email, "IBAN_CODE": iban_code, "CREDIT_CARD": credit_card, "US_SSN": us_ssn,
          "IP_ADDRESS": ip_address, "PHONE_NUMBER": phone_number}
