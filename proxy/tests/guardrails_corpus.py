"""A labelled corpus for the PII and secret recognisers: (text, the entities it holds).

True values in many formats and countries' number styles, and near misses that must not
trigger (invalid Luhn or checksum, order numbers, version strings, timestamps, prose). Used by
test_guardrails_scan.py (which asserts precision and recall) and bench/guardrails.py (prints them).
Sample values are the published test numbers (card networks' test cards, the IBAN registry's
examples, AWS's documented example key), never real ones."""

POSITIVE = [
    ("Write to jane.roe@example.org today", {"EMAIL_ADDRESS"}),
    ("cc: first.last+tag@sub.mail.example.co.uk", {"EMAIL_ADDRESS"}),
    ("Contact: Müller <hans.mueller@beispiel.de>", {"EMAIL_ADDRESS"}),
    ("Call me at (415) 555-2671 after six", {"PHONE_NUMBER"}),
    ("phone: 415.555.2671", {"PHONE_NUMBER"}),
    ("US office 1-212-555-0147", {"PHONE_NUMBER"}),
    ("London: +44 20 7946 0958", {"PHONE_NUMBER"}),
    ("tel 020 7946 0958", {"PHONE_NUMBER"}),
    ("Ruf an: +49 30 901820", {"PHONE_NUMBER"}),
    ("Telefon 030 12345678", {"PHONE_NUMBER"}),
    ("Téléphone : 01 42 68 53 00", {"PHONE_NUMBER"}),
    ("Paris +33 1 42 68 53 00", {"PHONE_NUMBER"}),
    ("mobile +91 98765 43210", {"PHONE_NUMBER"}),
    ("Sydney +61 2 9374 4000", {"PHONE_NUMBER"}),
    ("call 4155552671 now", {"PHONE_NUMBER"}),
    ("Visa 4111 1111 1111 1111 exp 12/29", {"CREDIT_CARD"}),
    ("card: 4111-1111-1111-1111", {"CREDIT_CARD"}),
    ("Mastercard 5555555555554444", {"CREDIT_CARD"}),
    ("amex 3782 822463 10005", {"CREDIT_CARD"}),
    ("Discover 6011 1111 1111 1117", {"CREDIT_CARD"}),
    ("MC 2-series 2223003122003222", {"CREDIT_CARD"}),
    ("IBAN GB82 WEST 1234 5698 7654 32", {"IBAN_CODE"}),
    ("Konto DE89370400440532013000", {"IBAN_CODE"}),
    ("virement FR14 2004 1010 0505 0001 3M02 606", {"IBAN_CODE"}),
    ("NL91ABNA0417164300 for the rent", {"IBAN_CODE"}),
    ("SSN 078-05-1121 on file", {"US_SSN"}),
    ("social security number: 219 09 9998", {"US_SSN"}),
    ("my ssn is 536225466", {"US_SSN"}),
    ("SSN: 123-45-6780", {"US_SSN"}),
    ("server at 192.168.10.24 is down", {"IP_ADDRESS"}),
    ("ping 8.8.8.8", {"IP_ADDRESS"}),
    ("host 2001:db8:85a3::8a2e:370:7334 answers", {"IP_ADDRESS"}),
    ("loopback ::1 and fe80::1ff:fe23:4567:890a", {"IP_ADDRESS"}),
    ("export OPENAI_API_KEY=sk-proj-Zx81Qw7TnB2vL5kR9mP3sA6dF0gH4jK", {"API_KEY"}),
    ("old key sk-9s8d7f6g5h4j3k2l1qwertyuiopASDFGH", {"API_KEY"}),
    ("ANTHROPIC_API_KEY=sk-ant-api03-AbC123dEf456GhI789jKl012MnO345pQr", {"API_KEY"}),
    ("maps key AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", {"API_KEY"}),
    ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", {"API_KEY"}),
    ("token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", {"API_KEY"}),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", {"API_KEY"}),
    ("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKl", {"API_KEY"}),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----", {"API_KEY"}),
    ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA\n-----END PRIVATE KEY-----", {"API_KEY"}),
    # Inside a candidate another recogniser rejects (a base64-looking path, a phone-shaped run).
    ("see https://github.com/acme/infrastructure/blob/main/deployment/ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
     {"API_KEY"}),
    ("pay +4111111111111111", {"CREDIT_CARD"}),
    ("QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ+AKIAIOSFODNN7EXAMPLE", {"API_KEY"}),
    ("ssn a:b:078-05-1121", {"US_SSN"}),
    ("Bill jane.roe@example.org, card 5555555555554444, call (415) 555-2671",
     {"EMAIL_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER"}),
]

# Cases we did not write: microsoft/presidio presidio-analyzer/tests/test_credit_card_recognizer.py.
PRESIDIO_CARDS = ["4012888888881881", "4012-8888-8888-1881", "4012 8888 8888 1881", "122000000000003",
                  "my credit card: 122000000000003", "371449635398431", "5555555555554444", "5019717010103742",
                  "30569309025904", "6011000400000000", "3528000700000000", "6759649826438453", "4111111111111111",
                  "4917300800000000", "4484070000000000"]
PRESIDIO_NOT_CARDS = ["4012-8888-8888-1882", "my credit card number is 4012-8888-8888-1882", "36168002586008",
                      "my credit card number is 36168002586008"]
POSITIVE += [(text, {"CREDIT_CARD"}) for text in PRESIDIO_CARDS]

NEGATIVE = PRESIDIO_NOT_CARDS + [
    "Visa 4111 1111 1111 1112 fails Luhn",
    "card 1234 5678 9012 3456",
    "IBAN GB82 WEST 1234 5698 7654 33 has a bad checksum",
    "Order #4155552671 shipped",
    "order number 1234567890",
    "invoice 2024-01-15 10:30:00 UTC",
    "timestamp 2024-03-01T12:45:00Z",
    "released on 15/01/2024",
    "version 1.2.3.4 is out",
    "pip install django==5.2.1",
    "python v3.11.9 and node 20.11.1",
    "ssn 000-12-3456 is not valid",
    "ssn 666-12-3456 is not valid",
    "ssn 912-34-5678 is not valid",
    "123456789 is just a number",
    "ip 999.1.1.1 is not an address",
    "MAC 00:1A:2B:3C:4D:5E",
    "at 10:30:45 the meeting starts",
    "sk-this-is-not-a-key-at-all-really",
    "use the sk-learn package",
    "the ratio was 3.14159 and 2.71828",
    "we sold 1,234,567 units in 2023",
    "ISBN 978-3-16-148410-0",
    "user@localhost is not routable",
    "Call extension 4471",
    "price $1299.99 for 12 months",
    "coordinates 48.8566, 2.3522",
    "room 101, floor 3, building 12",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "a sha: 3f786850e387550fdab836ed7e6dc881de23001b",
]


def score(found_by) -> tuple[float, float, int, int, int]:
    """found_by(text) -> set of entities; (precision, recall, true, false positives, false negatives)."""
    tp = fp = fn = 0
    for text, expected in POSITIVE:
        found = found_by(text)
        tp += len(found & expected)
        fp += len(found - expected)
        fn += len(expected - found)
    for text in NEGATIVE:
        fp += len(found_by(text))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, tp, fp, fn
