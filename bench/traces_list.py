"""The trace list at scale: loads 1,000,000 synthetic VAS logs and times the list query and API.

    .venv/bin/python bench/traces_list.py                  # SQLite, data/bench/traces.sqlite3
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/traces_list.py
        # PostgreSQL: a separate database, <name>_traces_bench, on that server (never the named one)
    options: --rows N (default 1,000,000), --runs N (default 40), --reload (drop and load again)

Reports p50/p99 in ms per scenario, for filter_logs() (the query) and for
GET /api/vas/logs through Django and DRF (what the page asks each refresh);
results go to bench/results/traces_list-<engine>.json too.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROVIDERS = [("openai", ["gpt-4.1", "gpt-4.1-mini", "gpt-5.4", "o3"], 0.5),
             ("anthropic", ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-6"], 0.3),
             ("gemini", ["gemini-2.5-flash", "gemini-2.5-pro"], 0.15),
             ("ollama", ["llama3.3", "qwen2.5:14b"], 0.05)]
WORDS = ("invoice summary customer refund policy shipping contract draft translate explain code review "
         "latency budget quarterly report meeting notes email reply schedule product launch").split()


def prepare_environment():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smartflow.settings")
    os.environ.setdefault("SMARTFLOW_DATA_DIR", str(ROOT / "data" / "bench"))
    os.environ.setdefault("SMARTFLOW_MASTER_KEY", "sk-sf-bench-master-key")
    url = os.environ.get("DATABASE_URL")
    if url:
        parts = urlsplit(url)
        name = parts.path.lstrip("/") or "postgres"
        bench_name = f"{name}_traces_bench"
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [bench_name]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{bench_name}"')
        os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{bench_name}"))
    import django

    django.setup()


def synthetic_rows(count: int, seed: int = 7):
    """Rows as tuples in the VASLog column order, newest last, over the last 30 days."""
    rnd = random.Random(seed)
    start = datetime.now(timezone.utc) - timedelta(days=30)
    step = timedelta(days=30) / count
    weights = [w for _, _, w in PROVIDERS]
    stages = json.dumps([{"name": "auth", "ms": 0.1}, {"name": "routing", "ms": 0.05},
                         {"name": "translation", "ms": 0.04}, {"name": "upstream_total", "ms": 420.0},
                         {"name": "response_translation", "ms": 0.05}])
    guard = json.dumps({"policies": [], "pii": [], "risk_score": 0.0})
    for i in range(count):
        stamp = start + step * i
        provider, models, _ = rnd.choices(PROVIDERS, weights)[0]
        model = rnd.choice(models)
        cache = rnd.choices(("hit", "miss", "bypass"), (0.2, 0.3, 0.5))[0]
        latency = round(rnd.lognormvariate(6.0, 0.8), 3)
        tin, tout = rnd.randint(10, 4000), rnd.randint(5, 1200)
        status = rnd.choices((200, 429, 502), (0.97, 0.02, 0.01))[0]
        prompt = json.dumps([{"role": "user", "content": " ".join(rnd.choices(WORDS, k=12)) + f" #{i}"}])
        response = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                            "finish_reason": "stop"}]})
        log_id = f"{int(stamp.timestamp() * 1000):012x}{rnd.getrandbits(80):020x}"
        yield (log_id, stamp, "sk-sf-bench", "bench", "chat.completions", model, provider, model, status,
               False, latency, round(rnd.uniform(0.3, 2.0), 3), stages, tin, tout,
               f"{(tin * 2 + tout * 8) / 1e6:.8f}", cache, "pass", guard,
               json.dumps({"override": None, "chain": [f"{provider}/{model}"], "fallback_used": False}),
               prompt, response, "")


COLUMNS = ["id", "timestamp", "key_prefix", "team", "endpoint", "client_model", "provider", "upstream_model",
           "status_code", "stream", "latency_ms", "overhead_ms", "stages", "tokens_input", "tokens_output",
           "cost_usd", "cache", "compliance", "guardrails", "routing", "prompt", "response", "error"]


def load(count: int):
    from django.db import connection

    from traces.models import VASLog

    table = VASLog._meta.db_table
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    began = time.perf_counter()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            raw = cursor.cursor  # psycopg 3: COPY is the fast path
            with raw.copy(f'COPY "{table}" ({cols}) FROM STDIN') as copy:
                for row in synthetic_rows(count):
                    copy.write_row(row)
            cursor.execute(f'ANALYZE "{table}"')
        else:
            marks = ", ".join("?" for _ in COLUMNS)
            sql = f'INSERT INTO "{table}" ({cols}) VALUES ({marks})'
            raw = connection.connection  # autocommit: one explicit transaction per chunk
            chunk = []

            def write(rows):
                raw.execute("BEGIN")
                raw.executemany(sql, rows)
                raw.execute("COMMIT")
            for row in synthetic_rows(count):
                chunk.append((*row[:1], row[1].isoformat(sep=" ").replace("+00:00", ""), *row[2:]))
                if len(chunk) == 50_000:
                    write(chunk)
                    chunk = []
            if chunk:
                write(chunk)
            raw.execute(f'ANALYZE "{table}"')
    return time.perf_counter() - began


def timed(fn, runs: int) -> dict:
    fn()  # warm the cache
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
            "max_ms": round(samples[-1], 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--reload", action="store_true")
    args = parser.parse_args()
    prepare_environment()

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from traces.models import VASLog
    from traces.queries import filter_logs

    settings.ALLOWED_HOSTS = ["*"]
    call_command("migrate", verbosity=0)
    existing = VASLog.objects.count()
    if args.reload or existing != args.rows:
        VASLog.objects.all().delete() if existing < 200_000 else _truncate(connection)
        print(f"loading {args.rows:,} synthetic VAS logs into {connection.vendor} …", flush=True)
        print(f"loaded in {load(args.rows):.1f} s", flush=True)
    else:
        print(f"reusing {existing:,} VAS logs already in the {connection.vendor} bench database")

    middle = VASLog.objects.order_by("-timestamp", "-id").values_list("timestamp", "id")[args.rows // 2]
    from traces.queries import _encode_cursor

    deep_cursor = _encode_cursor(middle[0], middle[1])
    some_id = middle[1]
    scenarios = {
        "newest page (limit 50)": {},
        "next page (keyset cursor)": {"cursor": filter_logs({}).next_cursor},
        "page at row 500,000 (cursor)": {"cursor": deep_cursor},
        "provider=anthropic": {"provider": "anthropic"},
        "cache=hit": {"cache": "hit"},
        "provider=gemini&cache=miss": {"provider": "gemini", "cache": "miss"},
        "sort=-latency_ms": {"sort": "-latency_ms"},
        "q=<request id prefix>": {"q": some_id[:16]},
        "q=claude-haiku (model)": {"q": "claude-haiku"},
        "q=refund (prompt text)": {"q": "refund"},
    }
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {settings.SMARTFLOW_MASTER_KEY}"}
    results = {}
    print(f"\n{'scenario':34} {'query p50':>10} {'p99':>9} {'API p50':>10} {'p99':>9}  rows  total")
    for name, params in scenarios.items():
        page = filter_logs(params)
        q = timed(lambda params=params: filter_logs(params), args.runs)
        query_string = "&".join(f"{k}={v}" for k, v in params.items())

        def api(query_string=query_string):
            r = client.get(f"/api/vas/logs?{query_string}", **auth)
            assert r.status_code == 200, r.content[:300]
        a = timed(api, args.runs)
        results[name] = {"query": q, "api": a, "rows": len(page.rows), "total": page.total,
                         "total_exact": page.total_exact}
        total = f"{page.total:,}{'' if page.total_exact else '~'}"
        print(f"{name:34} {q['p50_ms']:>8.2f}ms {q['p99_ms']:>7.2f}ms {a['p50_ms']:>8.2f}ms {a['p99_ms']:>7.2f}ms "
              f"{len(page.rows):>5}  {total}", flush=True)
    out = ROOT / "bench" / "results" / f"traces_list-{connection.vendor}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "engine": connection.vendor, "runs": args.runs,
                               "scenarios": results}, indent=2))
    print(f"\nwritten to {out.relative_to(ROOT)}")


def _truncate(connection):
    from traces.models import VASLog

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f'TRUNCATE "{VASLog._meta.db_table}"')
        else:
            cursor.execute(f'DELETE FROM "{VASLog._meta.db_table}"')


if __name__ == "__main__":
    main()
