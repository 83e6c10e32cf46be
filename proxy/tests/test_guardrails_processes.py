"""Two worker processes on one database both apply a policy written behind their backs, within
SMARTFLOW_CONFIG_TTL, without being told."""
import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from proxy.tests.test_serving import KEY, fake, serve  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="--workers 2 needs REDIS_URL")


def worker_of(workers: list[int], client_port: int, server_port: int) -> int:
    """The worker process holding the server side of the client's open connection (from the
    kernel's socket table: the answers do not say which worker gave them)."""
    me, peer = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == me and fields[2] == peer:
            inode = f"socket:[{fields[9]}]"
            break
    else:
        raise AssertionError("the connection is not in /proc/net/tcp")
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == inode:
                    return pid
            except OSError:
                continue
    raise AssertionError("no worker holds the connection")


def test_both_workers_pick_up_a_new_policy(serve, fake):  # noqa: F811
    served = serve("serve", "--host", "127.0.0.1", "--workers", "2", redis=True, SMARTFLOW_CONFIG_TTL="0.3")
    served.wait_ready()
    workers = served.workers()
    assert len(workers) == 2
    port = int(served.url.rsplit(":", 1)[1])
    body = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "mail jane.roe@example.org"}]})
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {KEY}\r\n"
               f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}")

    def ask() -> tuple[int, int]:
        """(the worker that answered, its status), on a new connection: the kernel spreads them."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(request.encode())
            head = conn.recv(12)  # "HTTP/1.1 200", the connection kept alive: the worker holds it
            worker = worker_of(workers, conn.getsockname()[1], port)
            return worker, int(head[9:12])

    assert {ask()[1] for _ in range(12)} == {200}
    with sqlite3.connect(served.data / "smartflow.sqlite3") as db:
        db.execute("insert into proxy_guardrailpolicy (name, kind, entities, pattern, words, action, \"on\", teams, "
                   "enabled, updated) values ('pii', 'pii', ?, '', '[]', 'block', 'prompt', '[]', 1, "
                   "datetime('now'))", (json.dumps(["EMAIL_ADDRESS"]),))
    # A worker's first request after the TTL starts its reload and may still see the old rules:
    # within a few seconds (the TTL, then a reload off the loop) every worker refuses, and a worker
    # that refused once never serves the prompt again.
    refusing: set[int] = set()
    deadline = time.monotonic() + 10
    while refusing != set(workers) and time.monotonic() < deadline:
        worker, status = ask()
        if status == 400:
            refusing.add(worker)
        else:
            assert worker not in refusing, "a worker served the prompt after refusing it"
            time.sleep(0.05)
    assert refusing == set(workers)
    assert {ask()[1] for _ in range(20)} == {400}
