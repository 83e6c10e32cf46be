"""CPU-only micro-benchmark of the guardrails: what they add to a request, and how well they find PII.

  .venv/bin/python bench/guardrails.py [--sizes 2000,100000,1000000] [--repeat 200]

For each prompt size: the combined RE2 scan alone, and the whole prompt-side check the policy runs
(every PII entity and the injection heuristics, redaction applied); p50 and p90 in ms, and µs per
kB (linear time means a flat µs/kB). Then the stream window's cost per chunk, and precision and
recall on the labelled corpus (proxy/tests/guardrails_corpus.py). Prompts are prose with numbers,
dates, versions and a few real entities; every size has its own random values (no lru hits).
"""
import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smartflow.settings")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402

from proxy.formats import OPENAI  # noqa: E402
from proxy.guardrails import rules as R  # noqa: E402
from proxy.guardrails.scan import INJECTION, scan  # noqa: E402
from proxy.guardrails.stream import Window  # noqa: E402
from proxy.providers import PROVIDERS  # noqa: E402
from proxy.providers.base import StreamState  # noqa: E402
from proxy.tests.guardrails_corpus import score  # noqa: E402

WORDS = ("the quarterly report shows revenue grew while costs in the north region fell and the team "
         "asked for a summary of the meeting notes before friday please include the action items").split()


def prompt(size: int, rng: random.Random) -> str:
    parts, length = [], 0
    while length < size:
        roll = rng.random()
        if roll < 0.04:
            word = f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif roll < 0.07:
            word = f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
        elif roll < 0.10:
            word = str(rng.randint(10, 99999))
        elif roll < 0.102:
            word = f"user{rng.randint(1, 10**6)}@example.com"
        elif roll < 0.103:
            word = f"({rng.randint(201, 989)}) 555-{rng.randint(1000, 9999)}"
        elif roll < 0.1035:
            word = "4111 1111 1111 1111"
        else:
            word = rng.choice(WORDS)
        parts.append(word)
        length += len(word) + 1
    return (" ".join(parts))[:size]


def timed(fn, repeat: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return sorted(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    rules = [R.Rule.compile(R.validate({"name": "pii", "kind": "pii", "action": "redact"})),
             R.Rule.compile(R.validate({"name": "injection", "kind": "injection", "action": "flag"}))]
    print(f"{'size':>9} {'scan p50':>10} {'scan p90':>10} {'check p50':>10} {'check p90':>10} {'us/kB':>7}")
    for size in (int(s) for s in args.sizes.split(",")):
        rng = random.Random(size)
        text = prompt(size, rng)
        repeat = max(5, min(args.repeat, int(args.repeat * 2000 / size) + 5))
        scans = timed(lambda: scan(text), repeat)

        def check():
            verdict = R.evaluate(rules, [(text, True)])
            return R.replace(text, verdict.send[0])
        checks = timed(check, repeat)
        p50 = statistics.median(checks)
        print(f"{size:>9} {statistics.median(scans) * 1e3:>9.3f}ms {scans[int(len(scans) * .9)] * 1e3:>9.3f}ms "
              f"{p50 * 1e3:>9.3f}ms {checks[int(len(checks) * .9)] * 1e3:>9.3f}ms {p50 * 1e6 / (size / 1000):>7.1f}")

    answer = prompt(20_000, random.Random(7))
    for chunk in (4, 16, 64):
        pieces = [answer[i:i + chunk] for i in range(0, len(answer), chunk)]
        events = [orjson.loads(orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                             "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}))
                  for p in pieces]

        def stream():
            window = Window(rules[:1], {}, set(), {})
            for piece in pieces:
                window.feed(piece)
            window.feed("", final=True)

        def relay():  # what the gateway does per chunk anyway: parse the event, translate, frame it
            state, writer = StreamState(), OPENAI.stream({}, {"id": "x", "model": "m"})
            for raw in (orjson.dumps(e) for e in events):
                for out in PROVIDERS["openai"].parse_stream_event(orjson.loads(raw), state):
                    writer.chunk(out)
        window_us = statistics.median(timed(stream, 7)) / len(pieces) * 1e6
        relay_us = statistics.median(timed(relay, 7)) / len(pieces) * 1e6
        print(f"stream, {chunk:>2}-char chunks: window {window_us:5.1f} us per chunk; the relay's own "
              f"parse+translate+frame {relay_us:5.1f} us")

    def found(text):
        return {f.entity for f in scan(text) if f.entity != INJECTION}
    precision, recall, tp, fp, fn = score(found)
    print(f"corpus: precision {precision:.3f} recall {recall:.3f} (tp {tp}, fp {fp}, fn {fn})")


if __name__ == "__main__":
    main()
