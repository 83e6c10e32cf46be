"""Cache keys and per-request cache controls (CONTRACT.md "MetaCache")."""
import orjson
import xxhash

from proxy.providers.base import ClientError

# What does not change the answer. Everything else does, so a parameter added next year causes a
# miss, never a wrong hit. "model" is the client's name: the key has the upstream model instead.
EXCLUDED = frozenset({"stream", "stream_options", "user", "metadata", "model"})
MAX_TTL = 366 * 24 * 3600
TTL_HEADER = "x-smartflow-cache-ttl"


def _digest(*parts) -> str:
    return xxhash.xxh3_128_hexdigest(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS))


def cache_key(team: str, provider: str, upstream_model: str, chat: dict) -> str:
    """The entry's key: the team, what serves it, and the internal request minus EXCLUDED.

    Under a routing policy, what serves it is the policy (provider "policy:NAME") and the
    client's model: its targets answer the same question (CONTRACT "MetaCache")."""
    return _digest(team, provider, upstream_model, {k: v for k, v in chat.items() if k not in EXCLUDED})


def semantic_scope(team: str, provider: str, upstream_model: str, chat: dict) -> str:
    """Where a semantic search may look: the same team, model and answer-changing parameters."""
    return f"{team}|{provider}|{upstream_model}|" + _digest(
        {k: v for k, v in chat.items() if k not in EXCLUDED and k != "messages"})


def conversation_text(chat: dict) -> str:
    """The conversation's text for embeddings: each message's text, one per line (the index
    embeds the end of it, where the question is)."""
    lines = []
    for message in chat.get("messages") or ():
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(content, str) and content:
            lines.append(content)
    return "\n".join(lines)


def parse_controls(headers: dict[str, str]) -> tuple[bool, bool, int | None]:
    """(look up, store, ttl) from Cache-Control and x-smartflow-cache-ttl; a bad TTL is a 400."""
    lookup = store = True
    control = headers.get("cache-control")
    if control:
        for directive in control.split(","):
            name = directive.split("=", 1)[0].strip().lower()
            if name == "no-store":
                lookup = store = False
            elif name == "no-cache":
                lookup = False
    ttl = None
    raw = headers.get(TTL_HEADER)
    if raw is not None:
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9 and int(raw) <= MAX_TTL):
            raise ClientError(f"{TTL_HEADER}: a whole number of seconds from 0 to {MAX_TTL} is expected.",
                              param=TTL_HEADER)
        ttl = int(raw)
        if ttl == 0:
            lookup = store = False
    return lookup, store, ttl
