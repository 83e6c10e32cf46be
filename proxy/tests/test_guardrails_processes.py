"""Two worker processes on one database both apply a policy written behind their backs, within
SMARTFLOW_CONFIG_TTL, without being told."""
import json
import os
import sqlite3
import time

import httpx
import pytest

from proxy.tests.test_serving import KEY, fake, serve  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="--workers 2 needs REDIS_URL")


def test_both_workers_pick_up_a_new_policy(serve, fake):  # noqa: F811
    served = serve("serve", "--host", "127.0.0.1", "--workers", "2", redis=True, SMARTFLOW_CONFIG_TTL="0.3")
    served.wait_ready()
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "mail jane.roe@example.org"}]}

    def statuses(n=12):
        out = []
        for _ in range(n):  # a new connection each time: the kernel spreads them over the workers
            with httpx.Client(timeout=10) as client:
                out.append(client.post(served.url + "/v1/chat/completions", json=body,
                                       headers={"Authorization": f"Bearer {KEY}"}).status_code)
        return out

    assert set(statuses()) == {200}
    with sqlite3.connect(served.data / "smartflow.sqlite3") as db:
        db.execute("insert into proxy_guardrailpolicy (name, kind, entities, pattern, words, action, \"on\", teams, "
                   "enabled, updated) values ('pii', 'pii', ?, '', '[]', 'block', 'prompt', '[]', 1, "
                   "datetime('now'))", (json.dumps(["EMAIL_ADDRESS"]),))
    # The first request after the TTL starts a worker's reload and may still see the old rules:
    # within a few seconds (the TTL, then a reload off the loop) every worker refuses.
    deadline = time.monotonic() + 10
    while set(statuses(6)) != {400} and time.monotonic() < deadline:
        time.sleep(0.3)
    assert set(statuses(20)) == {400}
    assert len(served.workers()) == 2
