"""The shapes of provider and cloud secrets (the API_KEY entity): prefixes the providers document,
as gitleaks and GitHub secret scanning match them (gitleaks/gitleaks config/gitleaks.toml)."""
from __future__ import annotations

PEM_BEGIN = "-----BEGIN "
PEM_END = r"-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY-----"
PATTERNS = {
    "ANTHROPIC": r"\bsk-ant-[A-Za-z0-9_\-]{20,160}",
    "OPENAI": r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,160}",
    "GOOGLE": r"\bAIza[0-9A-Za-z_\-]{35}",
    "AWS": r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    "GITHUB": r"\bgh[pousr]_[A-Za-z0-9]{36,120}|\bgithub_pat_[A-Za-z0-9_]{22,120}",
    "SLACK": r"\bxox[abposr]-[A-Za-z0-9\-]{10,120}",
    # Held in a stream from its BEGIN line to its END line, however long.
    "PEM": r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY-----[\s\S]*?" + PEM_END,
}


def api_key(text: str, before: str, after: str) -> float:
    """Real keys are random: a run of words joined by hyphens (sk-this-is-my-key) is not one."""
    if text.startswith("-----"):
        return 1.0
    body = text.split("_", 1)[-1] if text.startswith(("gh", "github_pat_")) else text.split("-", 1)[-1]
    if not any(c.isdigit() for c in body) or not any(c.isalpha() for c in body):
        return 0.0
    if text.startswith("sk-") and max(len(part) for part in text.split("-")) < 16:
        return 0.0
    return 1.0
