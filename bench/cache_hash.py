"""Times MetaCache's key for a large prompt: canonical JSON of the request plus its hash.

  .venv/bin/python bench/cache_hash.py [--sizes 100000,1000000] [--repeat 50]

With the gateway's own key function (proxy.cache.keys.cache_key) when this
checkout has it; else with what it is built from, orjson (sorted keys) and
xxhash's xxh3_128, said so in the output. blake2b is timed beside xxh3 for
comparison, and the semantic index's embedding where the checkout has it.
"""
import argparse
import hashlib
import os
import random
import sys
import time
from pathlib import Path

import orjson
import xxhash

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "request", "gateway", "cache", "answer", "model", "token", "café", "naïve", "\"quoted\"",
         "back\\slash", "line\nbreak", "emoji 😀", "日本語", "and", "of", "to", "a", "prompt", "stream"]


def prompt(size: int) -> str:
    """size characters of word salad with quotes, escapes, newlines and non-ASCII (JSON has work to do)."""
    rng, parts, length = random.Random(size), [], 0
    while length < size:
        word = rng.choice(WORDS)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size]


def chat(size: int) -> dict:
    return {"model": "gpt-4.1-mini", "stream": False, "max_tokens": 64, "temperature": 0.2,
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": prompt(size)}]}


def timed(fn, repeat: int) -> float:
    """Median microseconds of one call."""
    fn()
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return sorted(runs)[len(runs) // 2] * 1e6


def gateway_key():
    """The checkout's key function and the conversation text of the semantic index, or None."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smartflow.settings")
    os.environ.setdefault("SMARTFLOW_DATA_DIR", "/tmp/smartflow-cache-hash-bench")
    try:
        import django

        django.setup()
        from proxy.cache import keys
    except ImportError as error:
        print(f"(proxy.cache.keys: {error})")
        return None
    return keys


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="prompt sizes in characters")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    keys = gateway_key()
    if keys:
        print("key: proxy.cache.keys.cache_key (the gateway's own: team, provider, upstream model, request "
              "minus the excluded fields; orjson sorted keys + xxh3_128)")
    else:
        print("key: proxy.cache.keys is not in this checkout; orjson (OPT_SORT_KEYS) + xxhash.xxh3_128 directly")
    print(f"median of {args.repeat} runs, microseconds")
    print(f"{'prompt chars':>12} {'JSON bytes':>11} {'key total':>10} {'orjson':>8} {'xxh3_128':>9} "
          f"{'blake2b-128':>12} {'MB/s (key)':>10}")
    for size in (int(s) for s in args.sizes.split(",")):
        body = chat(size)
        raw = orjson.dumps(["team", "openai", "gpt-4.1-mini", body], option=orjson.OPT_SORT_KEYS)
        if keys:
            key = timed(lambda: keys.cache_key("team", "openai", "gpt-4.1-mini", body), args.repeat)
        else:
            key = timed(lambda: xxhash.xxh3_128_hexdigest(orjson.dumps(
                ["team", "openai", "gpt-4.1-mini", body], option=orjson.OPT_SORT_KEYS)), args.repeat)
        dumps = timed(lambda: orjson.dumps(["team", "openai", "gpt-4.1-mini", body], option=orjson.OPT_SORT_KEYS),
                      args.repeat)
        xxh = timed(lambda: xxhash.xxh3_128_hexdigest(raw), args.repeat)
        blake = timed(lambda: hashlib.blake2b(raw, digest_size=16).hexdigest(), args.repeat)
        print(f"{size:>12,} {len(raw):>11,} {key:>10.1f} {dumps:>8.1f} {xxh:>9.1f} {blake:>12.1f} "
              f"{len(raw) / key:>10.0f}")
    if keys and hasattr(keys, "conversation_text"):
        try:
            from proxy.cache import semantic
        except ImportError:
            return
        print("semantic mode, per request on top of the key (conversation text, then the embedding of its last "
              f"{semantic.MAX_CHARS:,} characters on the embedding thread, memo bypassed):")
        for size in (int(s) for s in args.sizes.split(",")):
            body = chat(size)
            text = timed(lambda: keys.conversation_text(body), args.repeat)
            semantic.embedder.embed("load the model")
            tail = keys.conversation_text(body)[-semantic.MAX_CHARS:]
            model = semantic.embedder.model()
            embed = timed(lambda: model.embed(tail), args.repeat)
            print(f"{size:>12,} chars: conversation_text {text:.1f} µs, embedding {embed:.1f} µs")


if __name__ == "__main__":
    main()
