"""CPU micro-benchmark: what a routing policy adds to a request whose first target succeeds.

Runs the gateway's own code in one process, the provider's answer canned (no network, no
database: the snapshots are filled in place), and times per request, in alternating rounds:

  plain    no policy: the model's own provider (today's single route)
  pinned   x-smartflow-provider pins the provider (no policy applies)
  policy   a failover policy whose first target answers (Anthropic, then OpenAI)

    .venv/bin/python bench/routing_overhead.py [requests per round, default 20000]

A few seconds of CPU; the issue's budget is policy - plain <= 0.05 ms.
"""
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smartflow.settings")
os.environ.setdefault("SMARTFLOW_DATA_DIR", "/tmp/smartflow-routing-bench")
os.environ["SMARTFLOW_CACHE"] = "off"

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402

from proxy import gateway, keystore, routing, upstream  # noqa: E402
from proxy.auth import Principal  # noqa: E402
from proxy.routing_policies import spec  # noqa: E402
from traces.trace import Trace  # noqa: E402

ANSWER = orjson.loads((ROOT / "bench" / "payloads" / "anthropic_response.json").read_bytes())
CHAT = {"model": "claude-sonnet-4-6", "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
PRINCIPAL = Principal("sk-sf-bench", None, None, is_master=True)
POLICY = spec.from_dict(spec.validate({"name": "bench", "strategy": "failover", "targets": [
    {"provider": "anthropic", "model": "claude-sonnet-4-6"}, {"provider": "openai", "model": "gpt-4.1"}]}))


async def canned(provider, request, timeout=None):
    return upstream.Reply(200, ANSWER, 0.0)


async def one(headers: dict) -> None:
    trace = Trace("chat")
    call = await gateway.prepare(dict(CHAT), headers, PRINCIPAL, trace)
    await gateway.complete(call, trace)
    gateway.response_headers(call, trace)


async def timed(n: int, headers: dict, policies: spec.Policies) -> float:
    spec.snapshot._store(policies)
    started = time.perf_counter()
    for _ in range(n):
        await one(headers)
    return (time.perf_counter() - started) / n * 1e6


async def main(n: int):
    routing.table._store(routing.load_table())
    keystore.provider_keys._store({"anthropic": "sk-ant-bench", "openai": "sk-bench"})
    upstream.send = canned
    with_policy = spec.Policies((POLICY,), {"bench": POLICY})
    cases = {"plain": ({}, spec.NONE), "pinned": ({"x-smartflow-provider": "anthropic"}, with_policy),
             "policy": ({}, with_policy)}
    for headers, policies in cases.values():  # warm up (memos, imports)
        await timed(2000, headers, policies)
    rounds = {name: [] for name in cases}
    for _ in range(7):
        for name, (headers, policies) in cases.items():
            rounds[name].append(await timed(n, headers, policies))
    median = {name: statistics.median(values) for name, values in rounds.items()}
    for name, value in median.items():
        print(f"{name:<8} {value:8.2f} µs per request (median of 7 rounds of {n})")
    added = (median["policy"] - median["plain"]) / 1000
    print(f"policy - plain: {added:.4f} ms (budget 0.05 ms): {'PASS' if added <= 0.05 else 'FAIL'}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000))
