"""A graceful stop loses no traces: the real `manage.py serve` process, SIGTERM, then count."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_flushes_every_trace(tmp_path, workers):
    proxy_port, management_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    if workers > 1:
        if not os.environ.get("REDIS_URL"):
            pytest.skip("several workers need REDIS_URL")
        env.update(REDIS_URL=os.environ["REDIS_URL"], CELERY_BROKER_URL="")
    with FakeUpstream() as fake:
        env.update(SMARTFLOW_DATA_DIR=str(tmp_path), SMARTFLOW_PROXY_PORT=str(proxy_port),
                   SMARTFLOW_MANAGEMENT_PORT=str(management_port), SMARTFLOW_MASTER_KEY="sk-sf-shutdown-test",
                   OPENAI_API_KEY="sk-test", SMARTFLOW_OPENAI_BASE_URL=fake.url + "/v1",
                   # Long enough that nothing is written before the stop unless the stop writes it.
                   SMARTFLOW_TRACE_FLUSH_SECONDS="300", SMARTFLOW_TRACE_BATCH_SIZE="100000")
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        server = subprocess.Popen([sys.executable, "manage.py", "serve", "--host", "127.0.0.1",
                                   "--workers", str(workers)], cwd=ROOT, env=env)
        try:
            url = f"http://127.0.0.1:{proxy_port}"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    httpx.get(url + "/health", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            headers = {"Authorization": "Bearer sk-sf-shutdown-test"}
            ids = set()
            with httpx.Client(base_url=url, headers=headers) as client:
                for i in range(40):
                    r = client.post("/v1/chat/completions", json={"model": "gpt-4.1" if i % 4 else "nope",
                                                                  "messages": [{"role": "user", "content": f"m{i}"}]})
                    ids.add(r.headers["x-smartflow-request-id"])
            db = sqlite3.connect(tmp_path / "smartflow.sqlite3")
            assert db.execute("select count(*) from traces_vaslog").fetchone()[0] == 0
            server.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal after a clean stop; the forking parent exits 0.
            assert server.wait(20) in (0, -signal.SIGTERM)
            stored = {row[0] for row in db.execute("select id from traces_vaslog")}
            assert stored == ids and len(ids) == 40
        finally:
            if server.poll() is None:
                server.kill()
