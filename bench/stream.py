"""Streaming benchmark: a paced SSE upstream, direct vs through the gateway.

    bench/stream.py                 standalone: starts its own upstream and gateway
                                    (temp SMARTFLOW_DATA_DIR, migrate, a virtual key,
                                    `manage.py serve`), measures, stops everything
    bench/stream.py upstream --port P
                                    only the paced upstream (run.sh starts it this way)
    bench/stream.py measure --upstream URL --gateway URL --key KEY [--gateway-pgid PID]
                                    only the measurements, against running servers

The upstream (aiohttp, its own process) plays OpenAI `chat.completion.chunk`
streams at POST /v1/chat/completions and Anthropic Messages event streams at
POST /v1/messages. The events are built from bench/payloads/*_stream.sse: the
events before the first text delta and after the last one are sent verbatim,
and the first text delta is the template for N deltas of varied text (quotes,
newlines, non-ASCII). The first event comes after a delay (model think time);
events follow with a configurable delay between them. The measurer sets the
pacing through POST /_bench/config, which answers with the text the upstream
will send, so every stream is checked against it.

Three routes: direct (the client speaks the upstream's own format to the
upstream), passthrough (OpenAI client -> gateway -> OpenAI upstream) and
translated (OpenAI client -> gateway -> Anthropic upstream, with
`x-smartflow-provider: anthropic`, model gpt-4.1). Phases:

 1) time to the first `data:` event carrying text, at c=1 (sequential requests);
 2) text chunks per second delivered to clients at c=32, no delay between events;
 3) a paced stream (delay between events) at c=1: time to the last text chunk,
    which shows whether the gateway forwards each event as it arrives.

Every stream is checked: HTTP 200, the text equals the upstream's, one client
chunk per upstream delta, a finish reason, and the stream ends with
`data: [DONE]` (direct Anthropic: with `message_stop`). Exit status 1 if any
check failed. Options come from the command line or BENCH_STREAM_* variables
(see --help).
"""
import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# BENCH_STREAM_HELD=1 (guardrails on): text may arrive in fewer, larger chunks than the upstream sent.
HELD = os.environ.get("BENCH_STREAM_HELD") == "1"

import aiohttp
import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PAYLOADS = BENCH / "payloads"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Text of the deltas: cycled; includes JSON escapes and multi-byte characters.
WORDS = [" The", " quick", " brown", " fox", ",", " \"jumps\"", " over", " the", " lazy", " dog", ".",
         "\n", " Café", " naïve", " 🚀", " 42", " a\\b", " <tag>", " end", ";"]


def use_uvloop():
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


# --------------------------------------------------------------------------- upstream

def sse_events(path: Path) -> list[str]:
    return [block for block in path.read_text().split("\n\n") if block.strip()]


def event_json(block: str) -> dict | None:
    data = [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]
    if not data or data[0] == "[DONE]":
        return None
    return json.loads("\n".join(data))


def is_delta(kind: str, block: str) -> bool:
    obj = event_json(block)
    if obj is None:
        return False
    if kind == "openai":
        return bool((obj.get("choices") or [{}])[0].get("delta", {}).get("content"))
    return obj.get("type") == "content_block_delta"


def build_stream(kind: str, texts: list[str]) -> list[bytes]:
    """The wire events of one stream: the payload file's prologue, len(texts) deltas, its epilogue."""
    blocks = sse_events(PAYLOADS / f"{kind}_stream.sse")
    deltas = [i for i, b in enumerate(blocks) if is_delta(kind, b)]
    first, last = deltas[0], deltas[-1]
    template = event_json(blocks[first])
    prefix = "".join(line + "\n" for line in blocks[first].splitlines() if not line.startswith("data:"))
    out = [b + "\n\n" for b in blocks[:first]]
    for text in texts:
        obj = json.loads(json.dumps(template))
        if kind == "openai":
            obj["choices"][0]["delta"]["content"] = text
        else:
            obj["delta"]["text"] = text
        out.append(prefix + "data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n\n")
    out += [b + "\n\n" for b in blocks[last + 1:]]
    return [e.encode() for e in out]


class Upstream:
    def __init__(self):
        self.configure({})

    def configure(self, cfg: dict) -> dict:
        self.first_delay = float(cfg.get("first_delay_ms", 20)) / 1000
        self.delay = float(cfg.get("delay_ms", 0)) / 1000
        n = int(cfg.get("events", 50))
        texts = [WORDS[i % len(WORDS)] for i in range(n)]
        self.streams = {kind: build_stream(kind, texts) for kind in ("openai", "anthropic")}
        self.requests = 0
        return {"text": "".join(texts), "events": n, "first_delay_ms": self.first_delay * 1000,
                "delay_ms": self.delay * 1000}

    async def config(self, request):
        from aiohttp import web
        return web.json_response(self.configure(await request.json()))

    async def play(self, request, kind: str):
        from aiohttp import web
        body = await request.read()
        try:
            req = orjson.loads(body)
            ok = req.get("stream") is True and bool(req.get("messages")) and bool(req.get("model"))
        except orjson.JSONDecodeError:
            ok = False
        if not ok:
            return web.json_response({"error": {"message": "bench upstream: expected a streaming request",
                                                "type": "invalid_request_error"}}, status=400)
        self.requests += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if self.first_delay:
            await asyncio.sleep(self.first_delay)
        delay = self.delay
        for event in self.streams[kind]:
            await resp.write(event)
            if delay:
                await asyncio.sleep(delay)
        await resp.write_eof()
        return resp


def serve_upstream(port: int):
    from aiohttp import web
    use_uvloop()
    up = Upstream()
    app = web.Application()
    app.router.add_post("/_bench/config", up.config)
    app.router.add_post("/v1/chat/completions", lambda r: up.play(r, "openai"))
    app.router.add_post("/v1/messages", lambda r: up.play(r, "anthropic"))
    app.router.add_get("/", lambda r: web.Response(text="bench stream upstream\n"))
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)


# --------------------------------------------------------------------------- client

class Route:
    def __init__(self, name, label, url, headers, body, wire, via_gateway):
        self.name, self.label, self.url, self.headers = name, label, url, headers
        self.body, self.wire, self.via_gateway = body, wire, via_gateway


def make_routes(upstream: str, gateway: str, key: str) -> dict[str, Route]:
    oa = json.loads((PAYLOADS / "openai_request_stream.json").read_text())
    an = {**json.loads((PAYLOADS / "anthropic_request.json").read_text()), "stream": True}
    gw_body = orjson.dumps({**oa, "model": "gpt-4.1"})
    json_ct = {"Content-Type": "application/json"}
    gw_headers = {**json_ct, "Authorization": f"Bearer {key}"}
    return {
        "direct-openai": Route("direct-openai", "direct, OpenAI upstream", f"{upstream}/v1/chat/completions",
                               {**json_ct, "Authorization": "Bearer sk-bench-upstream"},
                               orjson.dumps(oa), "openai", False),
        "direct-anthropic": Route("direct-anthropic", "direct, Anthropic upstream", f"{upstream}/v1/messages",
                                  {**json_ct, "x-api-key": "sk-ant-bench", "anthropic-version": "2023-06-01"},
                                  orjson.dumps(an), "anthropic", False),
        "passthrough": Route("passthrough", "gateway passthrough  OpenAI -> OpenAI",
                             f"{gateway}/v1/chat/completions", gw_headers, gw_body, "openai", True),
        "translated": Route("translated", "gateway translated   OpenAI -> Anthropic",
                            f"{gateway}/v1/chat/completions", {**gw_headers, "x-smartflow-provider": "anthropic"},
                            gw_body, "openai", True),
    }


class Stream:
    __slots__ = ("chunks", "end", "error", "first", "headers", "last", "start", "times")

    def __init__(self):
        self.start = time.perf_counter()
        self.headers = self.first = self.last = self.end = None
        self.chunks = 0
        self.error = None
        self.times = None


async def run_stream(session, route: Route, expect: dict, keep_times=False) -> Stream:
    s = Stream()
    if keep_times:
        s.times = []
    parts, finish, done, after_done = [], None, False, 0
    try:
        async with session.post(route.url, data=route.body, headers=route.headers) as resp:
            s.headers = time.perf_counter()
            if resp.status != 200:
                s.error = f"HTTP {resp.status}: {(await resp.read())[:300]!r}"
                return s
            buf = b""
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                buf += data
                while (i := buf.find(b"\n\n")) >= 0:
                    block, buf = buf[:i], buf[i + 2:]
                    payload = b"\n".join(line[5:].lstrip() for line in block.split(b"\n")
                                         if line.startswith(b"data:"))
                    if not payload:
                        continue
                    if done:
                        after_done += 1
                    if payload == b"[DONE]":
                        done = True
                        continue
                    obj = orjson.loads(payload)
                    if route.wire == "openai":
                        if "error" in obj:
                            s.error = f"error event: {payload[:300]!r}"
                            continue
                        choice = (obj.get("choices") or [{}])[0]
                        text = (choice.get("delta") or {}).get("content")
                        finish = choice.get("finish_reason") or finish
                    else:
                        kind = obj.get("type")
                        text = obj["delta"].get("text") if kind == "content_block_delta" else None
                        if kind == "message_delta":
                            finish = obj["delta"].get("stop_reason")
                        elif kind == "message_stop":
                            done = True
                    if text:
                        if s.first is None:
                            s.first = now
                        s.last = now
                        s.chunks += 1
                        parts.append(text)
                        if s.times is not None:
                            s.times.append(now)
            s.end = time.perf_counter()
            if buf.strip():
                s.error = s.error or f"unterminated event at the end: {buf[:200]!r}"
    except (TimeoutError, aiohttp.ClientError) as exc:
        s.error = f"{type(exc).__name__}: {exc}"
        return s
    if s.error:
        return s
    end_marker = "data: [DONE]" if route.wire == "openai" else "message_stop"
    if not done:
        s.error = f"the stream did not end with {end_marker}"
    elif after_done:
        s.error = f"{after_done} event(s) after {end_marker}"
    elif "".join(parts) != expect["text"]:
        got = "".join(parts)
        s.error = f"text differs from the upstream's ({len(got)} vs {len(expect['text'])} chars): {got[:80]!r}"
    elif s.chunks != expect["events"] and not HELD:  # guardrails hold text back and release it merged
        s.error = f"{s.chunks} text chunks for {expect['events']} upstream deltas"
    elif not finish:
        s.error = "no finish reason"
    return s


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def group_cpu_ticks(pgid: int | None) -> int:
    """user+system CPU ticks of every live process in process group pgid."""
    if not pgid:
        return 0
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total


class Bench:
    def __init__(self, args):
        self.args = args
        self.routes = make_routes(args.upstream.rstrip("/"), args.gateway.rstrip("/"), args.key)
        self.failures: dict[str, list[str]] = {}
        self.checked: dict[str, int] = {}
        self.results: dict = {}

    def account(self, route: Route, streams: list[Stream]):
        self.checked[route.name] = self.checked.get(route.name, 0) + len(streams)
        for s in streams:
            if s.error:
                self.failures.setdefault(route.name, []).append(s.error)
        return sum(1 for s in streams if s.error)

    async def configure(self, session, **cfg) -> dict:
        async with session.post(f"{self.args.upstream}/_bench/config", json=cfg) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def sequential(self, session, route, expect, n, keep_times=False):
        return [await run_stream(session, route, expect, keep_times) for _ in range(n)]

    async def ttfb(self, session):
        a = self.args
        expect = await self.configure(session, first_delay_ms=a.first_delay_ms, delay_ms=0, events=a.events)
        out = {}
        for name in ("direct-openai", "passthrough", "direct-anthropic", "translated"):
            route = self.routes[name]
            await self.sequential(session, route, expect, a.warmup_requests)  # not recorded
            streams = await self.sequential(session, route, expect, a.ttfb_requests)
            errors = self.account(route, streams)
            ok = [s for s in streams if not s.error]
            firsts = [(s.first - s.start) * 1000 for s in ok]
            out[name] = {"n": len(streams), "errors": errors, "p50": pct(firsts, 50), "p99": pct(firsts, 99),
                         "headers_p50": pct([(s.headers - s.start) * 1000 for s in ok], 50),
                         "total_p50": pct([(s.end - s.start) * 1000 for s in ok], 50)}
            print(f"  ttfb   {name:<17} c=1  n={len(streams)} p50={out[name]['p50']:.3f} ms "
                  f"p99={out[name]['p99']:.3f} ms errors={errors}", flush=True)
        self.results["ttfb"] = out

    async def throughput(self, session):
        """Each route for --duration seconds in total, in --rounds interleaved slices (direct and gateway
        alternate, so a burst of other load on the machine hits them alike)."""
        a = self.args
        expect = await self.configure(session, first_delay_ms=a.first_delay_ms, delay_ms=0, events=a.events)
        names = ("direct-openai", "passthrough", "direct-anthropic", "translated")
        acc = {name: {"streams": [], "elapsed": 0.0, "cpu": 0.0} for name in names}
        for name in names:
            if a.warmup and self.routes[name].via_gateway:
                await self.load(session, self.routes[name], expect, a.warmup)  # not recorded
        rounds = max(1, a.rounds)
        for _ in range(rounds):
            for name in names:
                route = self.routes[name]
                cpu0 = group_cpu_ticks(a.gateway_pgid) if route.via_gateway else 0
                streams, elapsed = await self.load(session, route, expect, a.duration / rounds)
                if route.via_gateway:
                    acc[name]["cpu"] += (group_cpu_ticks(a.gateway_pgid) - cpu0) / CLK_TCK
                acc[name]["streams"] += streams
                acc[name]["elapsed"] += elapsed
        out = {}
        for name in names:
            route, streams, elapsed, cpu = self.routes[name], *acc[name].values()
            errors = self.account(route, streams)
            ok = [s for s in streams if not s.error]
            chunks = sum(s.chunks for s in ok)
            firsts = [(s.first - s.start) * 1000 for s in ok]
            out[name] = {"streams": len(streams), "errors": errors, "elapsed_s": elapsed,
                         "chunks_per_s": chunks / elapsed, "streams_per_s": len(ok) / elapsed,
                         "ttfb_p50": pct(firsts, 50), "ttfb_p99": pct(firsts, 99),
                         "gw_cpu_us_per_chunk": (cpu * 1e6 / chunks) if (chunks and a.gateway_pgid
                                                                          and route.via_gateway) else None}
            r = out[name]
            print(f"  chunks {name:<17} c={a.concurrency} {r['chunks_per_s']:.0f} chunks/s "
                  f"{r['streams_per_s']:.1f} streams/s ttfb p50={r['ttfb_p50']:.1f} ms errors={errors}"
                  + (f" gw_cpu={r['gw_cpu_us_per_chunk']:.1f} us/chunk" if r['gw_cpu_us_per_chunk'] else ""),
                  flush=True)
        self.results["throughput"] = out

    async def load(self, session, route, expect, duration):
        streams: list[Stream] = []
        start = time.perf_counter()
        deadline = start + duration

        async def worker():
            while time.perf_counter() < deadline:
                streams.append(await run_stream(session, route, expect))

        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        return streams, time.perf_counter() - start

    async def paced(self, session):
        a = self.args
        expect = await self.configure(session, first_delay_ms=a.first_delay_ms, delay_ms=a.paced_delay_ms,
                                      events=a.paced_events)
        out = {}
        for name in ("direct-openai", "passthrough", "direct-anthropic", "translated"):
            route = self.routes[name]
            await self.sequential(session, route, expect, 2)
            streams = await self.sequential(session, route, expect, a.paced_requests, keep_times=True)
            errors = self.account(route, streams)
            ok = [s for s in streams if not s.error]
            gaps = [(t1 - t0) * 1000 for s in ok for t0, t1 in zip(s.times, s.times[1:])]
            out[name] = {"n": len(streams), "errors": errors,
                         "first_p50": pct([(s.first - s.start) * 1000 for s in ok], 50),
                         "last_p50": pct([(s.last - s.start) * 1000 for s in ok], 50),
                         "gap_p50": pct(gaps, 50), "gap_p99": pct(gaps, 99), "gap_max": max(gaps, default=float("nan"))}
            r = out[name]
            print(f"  paced  {name:<17} c=1  n={len(streams)} first p50={r['first_p50']:.2f} ms "
                  f"last p50={r['last_p50']:.2f} ms gap p50={r['gap_p50']:.2f} ms errors={errors}", flush=True)
        self.results["paced"] = out

    async def run(self):
        a = self.args
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            if a.ttfb_requests:
                await self.ttfb(session)
            if a.duration:
                await self.throughput(session)
            if a.paced_requests:
                await self.paced(session)
        return self.results


def report(args, results, checked, failures, load_before, load_after) -> str:
    out = []
    w = out.append
    w(f"Streaming (bench/stream.py)  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    w(f"load average before: {load_before}; after: {load_after} (2 cores shared by the client, "
      "the upstream and the gateway)")
    w(f"upstream: bench/stream.py (aiohttp + uvloop, 1 process); first event after {args.first_delay_ms:g} ms; "
      f"{args.events} text deltas; client: aiohttp, 1 process")
    w("routes: passthrough = OpenAI client -> gateway -> OpenAI upstream; translated = OpenAI client -> "
      "gateway -> Anthropic upstream")
    w("        (x-smartflow-provider: anthropic, model gpt-4.1); direct = the same upstream in its own format")
    pairs = [("passthrough", "direct-openai"), ("translated", "direct-anthropic")]
    if "ttfb" in results:
        r = results["ttfb"]
        w("")
        w(f"1) Time to first text chunk at c=1, {args.ttfb_requests} streams each (after "
          f"{args.warmup_requests} not recorded), ms")
        hdr = (f"   {'route':<12} {'direct p50':>10} {'p99':>7} {'gw p50':>8} {'p99':>7} "
               f"{'ADDED p50':>10} {'p99':>7} {'added to headers p50':>20} {'gw whole stream p50':>19} {'errors':>7}")
        w(hdr)
        w("   " + "-" * (len(hdr) - 3))
        for gw, direct in pairs:
            g, d = r[gw], r[direct]
            w(f"   {gw:<12} {d['p50']:>10.3f} {d['p99']:>7.3f} {g['p50']:>8.3f} {g['p99']:>7.3f} "
              f"{g['p50'] - d['p50']:>10.3f} {g['p99'] - d['p99']:>7.3f} "
              f"{g['headers_p50'] - d['headers_p50']:>20.3f} {g['total_p50']:>19.3f} "
              f"{g['errors'] + d['errors']:>7}")
        w(f"   (the upstream's first event comes {args.first_delay_ms:g} ms after it has the request; "
          "ADDED = gateway percentile minus direct percentile)")
    if "throughput" in results:
        r = results["throughput"]
        w("")
        w(f"2) Text chunks per second delivered to clients at c={args.concurrency}, no delay between events, "
          f"{args.duration:g} s each in {args.rounds} interleaved slices")
        hdr = (f"   {'route':<12} {'direct':>9} {'gateway':>9} {'gw/direct':>9} {'gw streams/s':>12} "
               f"{'gw ttfb p50':>11} {'p99':>7} {'gw CPU us/chunk':>15} {'errors':>7}")
        w(hdr)
        w("   " + "-" * (len(hdr) - 3))
        for gw, direct in pairs:
            g, d = r[gw], r[direct]
            cpu = f"{g['gw_cpu_us_per_chunk']:.1f}" if g["gw_cpu_us_per_chunk"] else "-"
            w(f"   {gw:<12} {d['chunks_per_s']:>9.0f} {g['chunks_per_s']:>9.0f} "
              f"{g['chunks_per_s'] / d['chunks_per_s'] if d['chunks_per_s'] else 0:>9.3f} "
              f"{g['streams_per_s']:>12.1f} {g['ttfb_p50']:>11.1f} {g['ttfb_p99']:>7.1f} {cpu:>15} "
              f"{g['errors'] + d['errors']:>7}")
        w("   (direct is bounded by the Python client and upstream on the same 2 cores; gw CPU: the gateway's")
        w("    user+system CPU per delivered chunk, including its share of request setup)")
    if "paced" in results:
        r = results["paced"]
        w("")
        w(f"3) Paced stream at c=1: {args.paced_events} deltas {args.paced_delay_ms:g} ms apart, "
          f"{args.paced_requests} streams each, ms")
        hdr = (f"   {'route':<12} {'direct last p50':>15} {'gw first p50':>12} {'gw last p50':>11} "
               f"{'ADDED last':>10} {'gw gap p50':>10} {'p99':>6} {'max':>6} {'errors':>7}")
        w(hdr)
        w("   " + "-" * (len(hdr) - 3))
        for gw, direct in pairs:
            g, d = r[gw], r[direct]
            w(f"   {gw:<12} {d['last_p50']:>15.2f} {g['first_p50']:>12.2f} {g['last_p50']:>11.2f} "
              f"{g['last_p50'] - d['last_p50']:>10.2f} {g['gap_p50']:>10.2f} {g['gap_p99']:>6.2f} {g['gap_max']:>6.2f} "
              f"{g['errors'] + d['errors']:>7}")
        w("   (gaps between text chunks at the client; a gateway that buffered would show one large gap)")
    w("")
    gw_checked = sum(n for k, n in checked.items() if not k.startswith("direct"))
    total = sum(checked.values())
    bad = sum(len(v) for v in failures.values())
    if not bad:
        chunks = "chunks merged where the guardrails held text (not counted)" if HELD else "one chunk per delta"
        w(f"4) Correctness: {total} streams checked ({gw_checked} through the gateway): all 200, text equal to "
          f"the upstream's, {chunks}, a finish reason, ended with data: [DONE]  OK")
    else:
        w(f"4) Correctness: {bad} of {total} streams FAILED the checks:")
        for name, errs in failures.items():
            w(f"   {name}: {len(errs)} failed; first: {errs[0]}")
    return "\n".join(out) + "\n"


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(args) -> int:
    load_before = args.loadavg_before or loadavg()
    use_uvloop()
    bench = Bench(args)
    results = asyncio.run(bench.run())
    text = report(args, results, bench.checked, bench.failures, load_before, loadavg())
    sys.stdout.write("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "checked": bench.checked,
                                               "failures": {k: v[:5] for k, v in bench.failures.items()},
                                               "loadavg_before": load_before, "loadavg_after": loadavg()},
                                              indent=1))
    return 1 if bench.failures else 0


# --------------------------------------------------------------------------- standalone

def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_http(url, proc, log=None, seconds=30):
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    tail = Path(log).read_text()[-3000:] if log and Path(log).exists() else ""
    raise SystemExit(f"bench: {url} did not answer within {seconds} s\n{tail}")


def stop_group(proc):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        print(f"bench: process {proc.pid} did not stop in 10 s; killing it", file=sys.stderr)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def spawn(cmd, log: Path, **kw) -> subprocess.Popen:
    """Starts cmd in its own session (so its whole group can be stopped), output to log."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)


def standalone(args) -> int:
    py = sys.executable
    load_before = loadavg()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below on TERM too
    tmp = Path(tempfile.mkdtemp(prefix="smartflow-stream."))
    procs = []
    status = 1
    try:
        up_port, gw_port, mgmt_port = free_ports(3)
        upstream = spawn([py, str(Path(__file__).resolve()), "upstream", "--port", str(up_port)],
                         tmp / "upstream.log")
        procs.append(upstream)
        env = {k: v for k, v in os.environ.items()
               if os.environ.get("BENCH_USE_ENV_SERVICES") == "1"
               or k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        env.update({
            "SMARTFLOW_DATA_DIR": str(tmp / "data"), "SMARTFLOW_PROXY_PORT": str(gw_port),
            "SMARTFLOW_MANAGEMENT_PORT": str(mgmt_port),
            "SMARTFLOW_MASTER_KEY": "sk-sf-bench-master-" + secrets.token_hex(12),
            "OPENAI_API_KEY": "sk-bench-openai", "ANTHROPIC_API_KEY": "sk-ant-bench",
            "SMARTFLOW_LOG_LEVEL": env.get("SMARTFLOW_LOG_LEVEL", "WARNING"), "PYTHONDONTWRITEBYTECODE": "1",
            "SMARTFLOW_OPENAI_BASE_URL": f"http://127.0.0.1:{up_port}/v1",
            "SMARTFLOW_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{up_port}",
        })
        subprocess.run([py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        key = subprocess.run([py, "manage.py", "smartflow_key", "create", "--team", "bench"], cwd=ROOT, env=env,
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        if not key.startswith("sk-sf-"):
            raise SystemExit("bench: could not create a virtual key")
        log = tmp / "gateway.log"
        gateway = spawn([py, "manage.py", "serve", "--host", "127.0.0.1"], log, cwd=ROOT, env=env)
        procs.append(gateway)
        wait_http(f"http://127.0.0.1:{up_port}/", upstream, tmp / "upstream.log")
        wait_http(f"http://127.0.0.1:{gw_port}/health", gateway, log)
        args.upstream, args.gateway, args.key = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}", key
        args.gateway_pgid, args.loadavg_before = gateway.pid, load_before
        print(f"bench: stream upstream on :{up_port}, gateway on :{gw_port}", flush=True)
        status = measure(args)
        return status
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        if args.keep or status != 0:
            print(f"bench: temp dir kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    up = sub.add_parser("upstream", help="run only the paced upstream")
    up.add_argument("--port", type=int, required=True)
    m = sub.add_parser("measure", help="measure against a running upstream and gateway")
    m.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:PORT (a `stream.py upstream`)")
    m.add_argument("--gateway", required=True, help="e.g. http://127.0.0.1:PORT")
    m.add_argument("--key", required=True, help="a Smartflow virtual key")
    m.add_argument("--gateway-pgid", type=int, default=0, help="process group of the gateway, for its CPU time")
    m.add_argument("--loadavg-before", default="")
    for parser in (p, m):
        parser.add_argument("--first-delay-ms", type=float, default=float(env("BENCH_STREAM_FIRST_DELAY_MS", 20)))
        parser.add_argument("--events", type=int, default=int(env("BENCH_STREAM_EVENTS", 50)))
        parser.add_argument("--ttfb-requests", type=int, default=int(env("BENCH_STREAM_TTFB_REQUESTS", 200)))
        parser.add_argument("--warmup-requests", type=int, default=int(env("BENCH_STREAM_WARMUP_REQUESTS", 20)))
        parser.add_argument("--concurrency", type=int, default=int(env("BENCH_STREAM_CONCURRENCY", 32)))
        parser.add_argument("--duration", type=float, default=float(env("BENCH_STREAM_DURATION", 10)))
        parser.add_argument("--warmup", type=float, default=float(env("BENCH_STREAM_WARMUP", 2)))
        parser.add_argument("--rounds", type=int, default=int(env("BENCH_STREAM_ROUNDS", 2)),
                            help="interleaved slices the --duration of each route is split into")
        parser.add_argument("--paced-requests", type=int, default=int(env("BENCH_STREAM_PACED_REQUESTS", 20)))
        parser.add_argument("--paced-events", type=int, default=int(env("BENCH_STREAM_PACED_EVENTS", 20)))
        parser.add_argument("--paced-delay-ms", type=float, default=float(env("BENCH_STREAM_PACED_DELAY_MS", 5)))
        parser.add_argument("--out", default="", help="also write the table to this file")
        parser.add_argument("--json", default="", help="also write the raw figures to this file")
    p.add_argument("--keep", action="store_true", default=env("BENCH_KEEP") == "1", help="keep the temp dir")
    args = p.parse_args(argv)
    if args.cmd == "upstream":
        serve_upstream(args.port)
        return 0
    if args.cmd == "measure":
        return measure(args)
    args.gateway_pgid, args.loadavg_before = 0, ""
    return standalone(args)


if __name__ == "__main__":
    sys.exit(main())
