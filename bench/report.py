"""Helpers for bench/run.sh (standard library only).

  report.py nginx TEMPLATE OUT TMP PORT STREAM_PORT PAYLOADS_DIR
      Renders the nginx config: fills in the paths, ports and the fixed
      provider answers (quoted for an nginx string literal).
  report.py summary RESULTS META
      Prints the summary table from the RESULT lines run.sh collected.

A RESULTS line is: server<TAB>route<TAB>concurrency<TAB>RESULT k=v ... (the
line post.lua prints), where server is "direct" (nginx itself) or the gateway
flavour (uvicorn, daphne, uvicorn-w2), or a MetaCache mode (cache-off, cache-mem,
cache-redis: BENCH_CACHE=1) with the routes openai, openai-miss (every request
different) and openai-hit.
"""
import json
import sys
from pathlib import Path
from statistics import median

# Targets from the core issue (full gateway path, this 2-core machine).
TARGET_ADDED_P50_MS = 0.6
TARGET_RPS_C64 = 1500
# MetaCache (issue 10): a hit's added p50 over a direct nginx answer, and a miss's cost over the cache off.
TARGET_HIT_MEM_MS, TARGET_HIT_REDIS_MS, TARGET_MISS_MS = 0.3, 0.6, 0.1
# Budgets and rate limits (issue 12): the policy's added p50 at c=1, and c=64 throughput kept.
TARGET_LIMITS_MS, TARGET_LIMITS_RPS_KEPT = 0.15, 0.90
CACHE_MODES = [
    (("cache-off", "openai"), "cache off, the same body every request"),
    (("cache-off", "openai-miss"), "cache off, every body different"),
    (("cache-mem", "openai-miss"), "exact cache, miss (every body different)"),
    (("cache-mem", "openai-hit"), "exact cache, hit from the in-process store"),
    (("cache-redis", "openai-hit"), "exact cache, hit from Redis"),
]

ROUTES = {
    "openai": ("OpenAI client -> OpenAI upstream", "openai"),
    "anthropic": ("OpenAI client -> Anthropic upstream (translated)", "anthropic"),
    "openai-stream": ("stream: OpenAI -> OpenAI", "openai-stream"),
    "anthropic-stream": ("stream: OpenAI -> Anthropic (translated)", "anthropic-stream"),
}


def nginx_quote(text: str) -> str:
    if "'" in text:
        raise SystemExit("bench payloads must not contain single quotes")
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render_nginx(template, out, tmp, port, stream_port, payloads):
    payloads = Path(payloads)

    def compact(name):
        return json.dumps(json.loads((payloads / name).read_text()), separators=(",", ":"))

    text = Path(template).read_text()
    for marker, value in {
        "@TMP@": tmp, "@PORT@": port, "@STREAM_PORT@": stream_port,
        "@OPENAI_JSON@": nginx_quote(compact("openai_response.json")),
        "@ANTHROPIC_JSON@": nginx_quote(compact("anthropic_response.json")),
        "@OPENAI_SSE@": nginx_quote((payloads / "openai_stream.sse").read_text()),
        "@ANTHROPIC_SSE@": nginx_quote((payloads / "anthropic_stream.sse").read_text()),
    }.items():
        text = text.replace(marker, str(value))
    Path(out).write_text(text)


def parse(path):
    rows = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        server, route, conc, result = line.split("\t", 3)
        values = dict(kv.split("=", 1) for kv in result.split()[1:])
        rows[(server, route, int(conc))] = {k: float(v) for k, v in values.items()}
    return rows


def ms(us):
    return f"{us / 1000:.3f}"


def summary(results, meta):
    rows = parse(results)
    meta = json.loads(Path(meta).read_text())
    out = []
    w = out.append
    w(f"Smartflow bench  {meta['date']}  commit {meta['commit']}{' (+local changes)' if meta['dirty'] else ''}")
    w(f"machine: {meta['cores']} cores, {meta['cpu']}; nginx {meta['nginx']}; {meta['wrk']}")
    w(f"load average before the run: {meta['loadavg']}; after: {' '.join(meta['loadavg_after'])} "
      "(anything else busy on these 2 cores skews the figures)")
    steal = sorted((r["steal_pct"], k) for k, r in rows.items() if "steal_pct" in r)
    if steal:
        worst, (server, route, conc) = steal[-1]
        w(f"CPU time the hypervisor gave other guests during the runs (steal): median {steal[len(steal) // 2][0]:.1f} %, "
          f"worst {worst:.1f} % ({server} {route} c={conc}); a run with more than a few % is not comparable")
    w(f"each run {meta['duration']} s (gateway runs after a {meta['warmup']} s warm-up); "
      f"upstream: nginx, 1 worker, fixed JSON; gateway: full path with a virtual key "
      f"(auth, routing, translation, VASLog tracing); SQLite + in-process cache")
    w("")
    gateways = [s for s in ("uvicorn", "uvicorn-w2", "daphne", "portkey", "litellm") if any(k[0] == s for k in rows)]

    w("1) Latency at concurrency 1 (wrk -t1 -c1 --latency), milliseconds")
    w("   added = gateway percentile minus direct percentile (same run, same route)")
    hdr = f"   {'route':<50} {'server':<11} {'direct p50':>10} {'p99':>7} {'gw p50':>8} {'p99':>7} " \
          f"{'ADDED p50':>10} {'p99':>7} {'gw CPU/req':>10} {'loop lag':>9} {'non2xx':>7}"
    w(hdr)
    w("   " + "-" * (len(hdr) - 3))
    for route, (label, direct_route) in ROUTES.items():
        d = rows.get(("direct", direct_route, 1))
        for server in gateways:
            g = rows.get((server, route, 1))
            if not g or not d:
                continue
            w(f"   {label:<50} {server:<11} {ms(d['p50_us']):>10} {ms(d['p99_us']):>7} "
              f"{ms(g['p50_us']):>8} {ms(g['p99_us']):>7} {ms(g['p50_us'] - d['p50_us']):>10} "
              f"{ms(g['p99_us'] - d['p99_us']):>7} {g.get('gw_cpu_ms_per_req', 0):>10.3f} "
              f"{g.get('lag_max_ms', 0):>9.3f} {int(g['non2xx'] + g['socket_errors']):>7}")
    w("   loop lag: the worst delay, in ms, of a 1 ms ticker on the gateway's event loop during the run")
    w("")
    w("2) Throughput at concurrency 64 (wrk -t2 -c64), requests per second")
    hdr = f"   {'route':<50} {'server':<11} {'direct':>9} {'gateway':>9} {'gw/direct':>9} " \
          f"{'gw p50 ms':>9} {'gw p99 ms':>9} {'gw CPU/req':>10} {'non2xx':>7}"
    w(hdr)
    w("   " + "-" * (len(hdr) - 3))
    for route, (label, direct_route) in ROUTES.items():
        d = rows.get(("direct", direct_route, 64))
        for server in gateways:
            g = rows.get((server, route, 64))
            if not g or not d:
                continue
            w(f"   {label:<50} {server:<11} {d['rps']:>9.0f} {g['rps']:>9.0f} "
              f"{g['rps'] / d['rps']:>9.3f} {ms(g['p50_us']):>9} {ms(g['p99_us']):>9} "
              f"{g.get('gw_cpu_ms_per_req', 0):>10.3f} {int(g['non2xx'] + g['socket_errors']):>7}")
    w("")
    w("   gw CPU/req: the gateway processes' user+system CPU ms per request in that run (less sensitive")
    w("   to other load on the machine than req/s; one process tops out near 1000 / (CPU/req) req/s)")
    w("")
    w("3) Targets (OpenAI route, uvicorn single process, as `manage.py serve` runs it)")
    d1, g1 = rows.get(("direct", "openai", 1)), rows.get(("uvicorn", "openai", 1))
    g64 = rows.get(("uvicorn", "openai", 64))
    verdicts = []
    if d1 and g1:
        added = (g1["p50_us"] - d1["p50_us"]) / 1000
        ok = added <= TARGET_ADDED_P50_MS
        verdicts.append(ok)
        w(f"   added p50 at c=1      {added:8.3f} ms   target <= {TARGET_ADDED_P50_MS} ms   "
          f"{'PASS' if ok else 'FAIL'}")
    if g64:
        ok = g64["rps"] >= TARGET_RPS_C64
        verdicts.append(ok)
        w(f"   throughput at c=64    {g64['rps']:8.0f} /s   target >= {TARGET_RPS_C64} /s  "
          f"{'PASS' if ok else 'FAIL'}")
    if any(k[0].startswith("cache-") for k in rows):
        out.extend(cache_summary(rows))
    if any(k[0].startswith("limits-") for k in rows):
        out.extend(limits_summary(rows))
    if any(k[0].startswith("routing-") for k in rows):
        out.extend(routing_summary(rows))
    if any(k[0].startswith("governance-") for k in rows):
        out.extend(governance_summary(rows))
    if any(k[0] in ("portkey", "litellm") for k in rows):
        out.extend(peers_summary(rows))
    errors = sum(int(r["non2xx"] + r["socket_errors"]) for k, r in rows.items() if k[0] != "direct")
    if errors:
        w(f"   WARNING: {errors} non-2xx responses or socket errors through the gateway "
          "(see the gateway log kept with BENCH_KEEP=1)")
    return "\n".join(out) + "\n"


def cache_summary(rows):
    """Section 4 (BENCH_CACHE=1): the cache's modes side by side, and the issue's targets."""
    out = ["", "4) MetaCache, OpenAI route, uvicorn single process (added = minus nginx direct, same run)"]
    w = out.append
    hdr = f"   {'mode':<46} {'c=1 p50':>8} {'p99':>7} {'ADDED p50':>10} {'c=64 req/s':>10} " \
          f"{'p50 ms':>7} {'gw CPU/req':>10} {'non2xx':>7}"
    w(hdr)
    w("   " + "-" * (len(hdr) - 3))
    d1, d64 = rows.get(("direct", "openai", 1)), rows.get(("direct", "openai", 64))
    for (server, route), label in CACHE_MODES:
        c1, c64 = rows.get((server, route, 1)), rows.get((server, route, 64))
        if not c1 and not c64:
            continue
        if c1:
            added = ms(c1["p50_us"] - d1["p50_us"]) if d1 else ""
            left = f"{ms(c1['p50_us']):>8} {ms(c1['p99_us']):>7} {added:>10}"
        else:
            left = f"{'—':>8} {'':>7} {'':>10}"
        if c64:
            right = f"{c64['rps']:>10.0f} {ms(c64['p50_us']):>7} {c64.get('gw_cpu_ms_per_req', 0):>10.3f}"
        else:
            right = f"{'—':>10} {'':>7} {'':>10}"
        bad = sum(int(r["non2xx"] + r["socket_errors"]) for r in (c1, c64) if r)
        w(f"   {label:<46} {left} {right} {bad:>7}")
    w("   targets (issue 10), p50 at c=1:")

    def target(name, value, limit):
        w(f"   {name:<58} {value:7.3f} ms   target <= {limit} ms   {'PASS' if value <= limit else 'FAIL'}")

    off, miss = rows.get(("cache-off", "openai-miss", 1)), rows.get(("cache-mem", "openai-miss", 1))
    if off and miss:
        target("a miss over the cache off (both: every body different)", (miss["p50_us"] - off["p50_us"]) / 1000,
               TARGET_MISS_MS)
    for server, name, limit in (("cache-mem", "a hit from the in-process store, over nginx direct", TARGET_HIT_MEM_MS),
                                ("cache-redis", "a hit from Redis, over nginx direct", TARGET_HIT_REDIS_MS)):
        hit = rows.get((server, "openai-hit", 1))
        if hit and d1:
            target(name, (hit["p50_us"] - d1["p50_us"]) / 1000, limit)
    if not rows.get(("cache-mem", "openai-hit", 1)):
        w("   (no hit or miss runs: this build has no MetaCache, or its preflight failed; see the run's output)")
    if d64:
        w(f"   nginx direct at c=64: {d64['rps']:.0f} req/s")
    return out


def limits_summary(rows):
    """Section 5 (BENCH_LIMITS=1): limits off and on, both on Redis, and the issue's targets."""
    out = ["", "5) Budgets and rate limits, OpenAI route, uvicorn single process on Redis"]
    w = out.append
    w(f"   {'mode':<46} {'c=1 p50':>8} {'p99':>7} {'c=64 req/s':>10} {'p50 ms':>7} {'gw CPU/req':>10} {'non2xx':>7}")
    for server, label in (("limits-off", "SMARTFLOW_LIMITS=0"),
                          ("limits-redis", "limits on: rpm, tpm and budget on key and team")):
        c1, c64 = rows.get((server, "openai", 1)), rows.get((server, "openai", 64))
        if not c1 or not c64:
            continue
        bad = sum(int(r["non2xx"] + r["socket_errors"]) for r in (c1, c64))
        w(f"   {label:<46} {ms(c1['p50_us']):>8} {ms(c1['p99_us']):>7} {c64['rps']:>10.0f} {ms(c64['p50_us']):>7} "
          f"{c64.get('gw_cpu_ms_per_req', 0):>10.3f} {bad:>7}")
    def pairs(conc):  # (off, on) of each round: "limits-off", then "limits-off#2", …
        found = [(rows.get((f"limits-off{s}", "openai", conc)), rows.get((f"limits-redis{s}", "openai", conc)))
                 for s in [""] + [f"#{n}" for n in range(2, 100)]]
        return [(off, on) for off, on in found if off and on]
    added = [(on["p50_us"] - off["p50_us"]) / 1000 for off, on in pairs(1)]
    kept = [on["rps"] / off["rps"] for off, on in pairs(64)]
    cpu = [on.get("gw_cpu_ms_per_req", 0) - off.get("gw_cpu_ms_per_req", 0) for off, on in pairs(64)]
    many = len(kept) > 1  # rounds of off then on: each pair compared, the median judged
    if added:
        each = f"   (rounds: {', '.join(f'{a:.3f}' for a in added)})" if many else ""
        w(f"   {'added p50 at c=1 (limits on minus off)' + (', median' if many else ''):<58} {median(added):7.3f} ms   "
          f"target <= {TARGET_LIMITS_MS} ms   {'PASS' if median(added) <= TARGET_LIMITS_MS else 'FAIL'}{each}")
    if kept:
        each = f"   (rounds: {', '.join(f'{k:.1%}' for k in kept)})" if many else ""
        w(f"   {'c=64 throughput kept (on / off)' + (', median' if many else ''):<58} {median(kept):7.1%}      "
          f"target >= {TARGET_LIMITS_RPS_KEPT:.0%}      {'PASS' if median(kept) >= TARGET_LIMITS_RPS_KEPT else 'FAIL'}{each}")
        w(f"   {'gateway CPU a request added at c=64' + (', median' if many else ''):<58} {median(cpu) * 1000:7.0f} us")
    return out


ROUTING_MODES = [
    (("uvicorn", "anthropic"), "healthy Anthropic, no policy (from above)"),
    (("routing-healthy", "openai"), "healthy Anthropic, failover policy"),
    (("routing-none", "anthropic"), "20 % 529, no policy (those are 502s)"),
    (("routing-failover", "openai"), "20 % 529, failover anthropic -> openai"),
]
TARGET_POLICY_MS = 0.05  # issue 13: a policy whose first target succeeds, over the plain route


def measured(rows, modes):
    """(label, c=1 row, c=64 row) for each mode that has a run."""
    for (server, route), label in modes:
        c1, c64 = rows.get((server, route, 1)), rows.get((server, route, 64))
        if c1 or c64:
            yield label, c1, c64


def routing_summary(rows):
    """Section 6 (BENCH_ROUTING=1): throughput and p99 with and without a failover policy."""
    out = ["", "6) Routing policies, OpenAI client, uvicorn single process",
           f"   {'mode':<44} {'c=1 p50':>8} {'p99':>7} {'c=64 req/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
           f"{'gw CPU/req':>10} {'non2xx':>7}"]
    w = out.append
    w("   " + "-" * (len(out[-1]) - 3))
    for label, c1, c64 in measured(rows, ROUTING_MODES):
        left = f"{ms(c1['p50_us']):>8} {ms(c1['p99_us']):>7}" if c1 else f"{'—':>8} {'':>7}"
        right = (f"{c64['rps']:>10.0f} {ms(c64['p50_us']):>7} {ms(c64['p99_us']):>7} "
                 f"{c64.get('gw_cpu_ms_per_req', 0):>10.3f}") if c64 else f"{'—':>10} {'':>7} {'':>7} {'':>10}"
        bad = sum(int(r["non2xx"] + r["socket_errors"]) for r in (c1, c64) if r)
        w(f"   {label:<44} {left} {right} {bad:>7}")
    plain, policy = rows.get(("uvicorn", "anthropic", 1)), rows.get(("routing-healthy", "openai", 1))
    if plain and policy:
        added = (policy["p50_us"] - plain["p50_us"]) / 1000
        w(f"   a policy whose first target succeeds, p50 over the plain route {added:7.3f} ms   "
          f"target <= {TARGET_POLICY_MS} ms (noise at this scale: see bench/routing_overhead.py)")
    w("   (the 529 runs: after 5 failures in 30 s the breaker skips Anthropic for 30 s, then probes it)")
    return out


TARGET_GOVERNANCE_MS = {"governance-off": 0.4, "governance-on": 0.6}  # issue 14: added p50 at c=1


def governance_summary(rows):
    """Section 8 (BENCH_GOVERNANCE=1): every policy off, then the exact cache (miss), guardrails and
    limits all on, on Redis; added = minus nginx direct (OpenAI route, same run)."""
    out = ["", "8) Governance off and all on (exact MetaCache miss path, guardrails, limits; on Redis)",
           f"   {'mode':<40} {'added p50 c=1':>13} {'p99 c=1':>8} {'c=64 req/s':>10} {'CPU/req c=64':>12} "
           f"{'RSS MiB':>8} {'non2xx':>7}"]
    w = out.append
    d1 = rows.get(("direct", "openai", 1))
    for server, label in (("governance-off", "every policy off"), ("governance-on", "cache miss + guardrails + limits")):
        c1, c64 = rows.get((server, "openai-miss", 1)), rows.get((server, "openai-miss", 64))
        if not c1 or not c64 or not d1:
            continue
        added = (c1["p50_us"] - d1["p50_us"]) / 1000
        bad = sum(int(r["non2xx"] + r["socket_errors"]) for r in (c1, c64))
        w(f"   {label:<40} {added:>13.3f} {ms(c1['p99_us']):>8} {c64['rps']:>10.0f} "
          f"{c64.get('gw_cpu_ms_per_req', 0):>12.3f} {c64.get('rss_mib', 0):>8.1f} {bad:>7}")
        limit = TARGET_GOVERNANCE_MS[server]
        w(f"   {'':<40} target added p50 <= {limit} ms   {'PASS' if added <= limit else 'FAIL'}")
    return out


TARGET_VS_PORTKEY_RPS = 2.5  # issue 14: throughput at c=64, one process each


def peers_summary(rows):
    """Section 7 (BENCH_PEERS=1): Smartflow beside Portkey and LiteLLM, OpenAI route, same run."""
    out = ["", "7) Peers, OpenAI route, one process each, same upstream and load (added = minus nginx direct)",
           f"   {'gateway':<12} {'added p50 c=1':>13} {'p99 c=1':>8} {'c=64 req/s':>10} {'CPU/req c=64':>12} "
           f"{'RSS MiB':>8} {'non2xx':>7}"]
    w = out.append
    d1 = rows.get(("direct", "openai", 1))
    for server in ("uvicorn", "portkey", "litellm"):
        c1, c64 = rows.get((server, "openai", 1)), rows.get((server, "openai", 64))
        if not c1 or not c64 or not d1:
            continue
        bad = sum(int(r["non2xx"] + r["socket_errors"]) for r in (c1, c64))
        w(f"   {'smartflow' if server == 'uvicorn' else server:<12} {ms(c1['p50_us'] - d1['p50_us']):>13} "
          f"{ms(c1['p99_us']):>8} {c64['rps']:>10.0f} {c64.get('gw_cpu_ms_per_req', 0):>12.3f} "
          f"{c64.get('rss_mib', 0):>8.1f} {bad:>7}")
    ours, theirs = rows.get(("uvicorn", "openai", 64)), rows.get(("portkey", "openai", 64))
    if ours and theirs:
        ratio = ours["rps"] / theirs["rps"]
        w(f"   c=64 throughput, Smartflow / Portkey {ratio:6.2f}x   target >= {TARGET_VS_PORTKEY_RPS}x   "
          f"{'PASS' if ratio >= TARGET_VS_PORTKEY_RPS else 'FAIL'}")
        w(f"   RSS after the runs, Smartflow / Portkey {ours.get('rss_mib', 0):.1f} / {theirs.get('rss_mib', 0):.1f} MiB   "
          f"target: no higher   {'PASS' if ours.get('rss_mib', 0) <= theirs.get('rss_mib', 0) else 'FAIL'}")
    return out


def main(argv):
    if len(argv) >= 2 and argv[1] == "nginx" and len(argv) == 8:
        render_nginx(*argv[2:])
    elif len(argv) == 4 and argv[1] == "summary":
        sys.stdout.write(summary(argv[2], argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
