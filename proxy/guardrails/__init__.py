"""Guardrails: PII, secret and prompt-injection recognisers, and the rules a policy compiles to.

scan.py finds everything in one linear-time (RE2) pass; pii.py, secrets.py and injection.py hold
the patterns and the checks that keep false positives down; rules.py turns the policies stored in
the database into what the guardrails policy (proxy/policies/guardrails.py) applies; api.py is the
management API.
"""
