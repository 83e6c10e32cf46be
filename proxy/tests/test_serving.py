"""The real `manage.py serve` (and runserver): keep-alive, the trace writer under every server, supervised workers."""
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-sf-serving-test"
CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


class Served:
    """A gateway process on its own SQLite data folder, against the fake upstream."""

    def __init__(self, tmp_path: Path, fake: FakeUpstream, command: list[str], redis: bool = False, **env):
        self.data = tmp_path / uuid.uuid4().hex[:8]
        self.proxy_port, self.management_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        if redis:
            self.env.update(REDIS_URL=os.environ["REDIS_URL"], CELERY_BROKER_URL="",
                            SMARTFLOW_CACHE_PREFIX=f"test-serving-{uuid.uuid4().hex[:8]}")
        self.env.update(SMARTFLOW_DATA_DIR=str(self.data), SMARTFLOW_PROXY_PORT=str(self.proxy_port),
                        SMARTFLOW_MANAGEMENT_PORT=str(self.management_port), SMARTFLOW_MASTER_KEY=KEY,
                        OPENAI_API_KEY="sk-test", SMARTFLOW_OPENAI_BASE_URL=fake.url + "/v1",
                        **{k: str(v) for k, v in env.items()})
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True)
        command = [part.format(proxy_port=self.proxy_port) for part in command]
        self.process = subprocess.Popen([sys.executable, "manage.py", *command], cwd=ROOT, env=self.env,
                                        start_new_session=True)  # its own group, as a terminal gives it

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/health", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the gateway did not start")

    def chat(self, client: httpx.Client | None = None) -> str:
        post = client.post if client else httpx.post
        r = post(self.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"},
                 timeout=10)
        assert r.status_code == 200, r.text
        return r.headers["x-smartflow-request-id"]

    def stored(self) -> set[str]:
        with sqlite3.connect(self.data / "smartflow.sqlite3") as db:
            return {row[0] for row in db.execute("select id from traces_vaslog")}

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return sorted(map(int, children))

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture
def fake():
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def serve(tmp_path, fake):
    started = []

    def start(*command, **kwargs) -> Served:
        served = Served(tmp_path, fake, list(command), **kwargs)
        started.append(served)
        return served
    yield start
    for served in started:
        served.stop()


def request_bytes(port: int) -> bytes:
    return f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n\r\n".encode()


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_idle_keep_alive_connections_last_the_configured_time(serve):
    servers = [serve("serve", "--host", "127.0.0.1", "--server", name, SMARTFLOW_KEEPALIVE_SECONDS=8)
               for name in ("uvicorn", "daphne")]
    for served in servers:
        served.wait_ready()
    pairs = []
    for served in servers:
        pair = [socket.create_connection(("127.0.0.1", served.proxy_port), timeout=5) for _ in range(2)]
        for sock in pair:
            sock.sendall(request_bytes(served.proxy_port))
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        pairs.append((served, pair))
    began = time.monotonic()
    time.sleep(6)  # past uvicorn's own 5 s default
    for served, (reused, _) in pairs:
        reused.sendall(request_bytes(served.proxy_port))
        assert read_response(reused).startswith(b"HTTP/1.1 200"), f"{served.process.args}: closed too soon"
    time.sleep(max(0.0, began + 9.5 - time.monotonic()))
    for _, (_, idle) in pairs:
        idle.settimeout(3)
        assert idle.recv(1) == b"", "the idle connection outlived SMARTFLOW_KEEPALIVE_SECONDS"
    for _, pair in pairs:
        for sock in pair:
            sock.close()


@pytest.mark.parametrize("command", [["serve", "--host", "127.0.0.1", "--server", "daphne"],
                                     ["runserver", "--noreload", "127.0.0.1:{proxy_port}"]])
def test_the_trace_writer_runs_under_servers_without_a_lifespan(serve, command):
    served = serve(*command)
    served.wait_ready()
    ids = {served.chat() for _ in range(5)}
    deadline = time.monotonic() + 10
    while not ids <= served.stored() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ids <= served.stored(), "traces stayed in memory while the server ran"
    os.killpg(served.process.pid, signal.SIGTERM)
    served.process.wait(20)


def worker_gone(served: Served, pid: int) -> bool:
    return pid not in served.workers() and len(served.workers()) == 2


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="several workers need REDIS_URL")
def test_a_dead_worker_is_replaced_and_sigterm_flushes_every_survivor(serve):
    served = serve("serve", "--host", "127.0.0.1", "--workers", "2", redis=True,
                   SMARTFLOW_TRACE_FLUSH_SECONDS=300, SMARTFLOW_TRACE_BATCH_SIZE=100000).wait_ready()
    deadline = time.monotonic() + 10
    while len(served.workers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    victim, survivor = served.workers()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while not worker_gone(served, victim) and time.monotonic() < deadline:
        time.sleep(0.1)
    (new,) = set(served.workers()) - {survivor}
    ids = set()
    os.kill(survivor, signal.SIGSTOP)  # only the new worker can answer now
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # it may still be starting
            try:
                ids.add(served.chat())
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert ids, "the replacement worker does not serve"
    finally:
        os.kill(survivor, signal.SIGCONT)
    for _ in range(30):  # fresh connections: both workers take some
        ids.add(served.chat())
    assert served.stored() == set()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(40) == 0
    assert ids <= served.stored() and len(ids) == 31


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="several workers need REDIS_URL")
def test_ctrl_c_stops_every_worker_gracefully(serve):
    served = serve("serve", "--host", "127.0.0.1", "--workers", "2", redis=True,
                   SMARTFLOW_TRACE_FLUSH_SECONDS=300, SMARTFLOW_TRACE_BATCH_SIZE=100000).wait_ready()
    ids = {served.chat() for _ in range(30)}
    os.killpg(served.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole group
    assert served.process.wait(40) == 0
    assert served.stored() == ids
