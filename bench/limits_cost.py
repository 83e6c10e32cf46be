"""CPU micro-benchmark: what the limits policy costs the gateway's one thread per request, on Redis.

Runs the policy's own phases in one process (uvloop), as the gateway does: the request phase (the
reservation started), its gate passed, the log phase (the settlement posted). The provider is not
called: the trace is given the usage an answer would bring. The key and its team each have an rpm,
a tpm and a budget (six counters, as bench/run.sh's limits runs), never refused. CONCURRENCY
requests at a time share the loop's one Redis connection, as at c=64. Timed with the process's CPU
clock, in alternating rounds against the same loop with the policy off (the routing and
translation both do), and reported as the difference: the policy's own cost, Redis' time excluded.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/limits_cost.py [requests per round]

Its keys are under the prefix smartflow-bench-limits and are deleted afterwards.
"""
import asyncio
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smartflow.settings")
os.environ.setdefault("SMARTFLOW_DATA_DIR", "/tmp/smartflow-limits-bench")
os.environ["SMARTFLOW_CACHE"] = "off"
os.environ["SMARTFLOW_CONFIG_TTL"] = "1e9"  # the snapshots filled in place stay (no database here)
os.environ["SMARTFLOW_CACHE_PREFIX"] = "smartflow-bench-limits"
os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "64"))

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402
import uvloop  # noqa: E402

from proxy import gateway, keystore, prices, routing  # noqa: E402
from proxy.auth import Principal  # noqa: E402
from proxy.limits import Limits, tokens  # noqa: E402
from proxy.policies import Exchange  # noqa: E402
from proxy.policies.limits import LimitsPolicy  # noqa: E402
from proxy.routing_policies import spec  # noqa: E402
from traces.trace import Trace  # noqa: E402

CHAT = orjson.loads((ROOT / "bench" / "payloads" / "openai_request.json").read_bytes())
LIMITS = Limits(team_rpm=10**9, team_tpm=2 * 10**9, team_budget=Decimal("99999999"),
                key_rpm=10**9, key_tpm=2 * 10**9, key_budget=Decimal("99999999"))
PRINCIPAL = Principal("sk-sf-bench", "bench-limits", 1, key_id=1, limits=LIMITS)
USAGE = {"tokens_input": 21, "tokens_output": 9, "cost_usd": Decimal("0.0000234")}


async def one(policy: LimitsPolicy | None):
    trace = Trace("chat.completions")
    call = await gateway.prepare(dict(CHAT), {}, PRINCIPAL, trace)
    if policy is None:
        return
    ex = Exchange(None, {}, PRINCIPAL, trace, call)
    await policy.request(ex)
    await call.pass_gate()
    trace.stage("upstream_total", upstream=True)
    trace.set(status_code=200, **USAGE)
    policy.log(ex)


async def timed(n: int, policy: LimitsPolicy | None) -> float:
    started = time.process_time()
    for _ in range(n // CONCURRENCY):
        await asyncio.gather(*(one(policy) for _ in range(CONCURRENCY)))
    await asyncio.sleep(0.01)  # the last settlements written and answered
    return (time.process_time() - started) / n * 1e6


async def main(n: int):
    import gc

    from smartflow.asgi import GC_YOUNG_THRESHOLD

    gc.collect()  # as the server does at start-up (smartflow/asgi.py)
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    routing.table._store(routing.load_table())
    keystore.provider_keys._store({"openai": "sk-bench"})
    prices.table._store(prices.load_table())
    spec.snapshot._store(spec.NONE)
    tokens.encoding()
    policy = LimitsPolicy()
    for case in (None, policy):  # warm up: the connection, the script loaded, memos
        await timed(2000, case)
    off, on = [], []
    for _ in range(7):
        off.append(await timed(n, None))
        on.append(await timed(n, policy))
    base, total = statistics.median(off), statistics.median(on)
    print(f"policy off {base:7.2f} µs, on {total:7.2f} µs per request: the policy's own {total - base:6.2f} µs "
          f"(median of 7 rounds of {n}, {CONCURRENCY} at a time)")
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    for key in client.scan_iter("smartflow-bench-limits:*"):
        client.delete(key)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000))
