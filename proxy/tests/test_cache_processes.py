"""Two gateway processes on one Redis share MetaCache entries."""
import os
import uuid

import httpx
import pytest

from proxy.tests.test_serving import KEY, fake, serve  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")


def test_two_processes_share_entries(serve, fake):  # noqa: F811
    prefix = f"test-cache-{uuid.uuid4().hex[:8]}"
    first, second = (serve("serve", "--host", "127.0.0.1", redis=True, SMARTFLOW_CACHE="exact",
                           SMARTFLOW_CACHE_PREFIX=prefix) for _ in range(2))
    first.wait_ready()
    second.wait_ready()
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"shared {uuid.uuid4().hex}"}]}

    def ask(served, **extra):
        r = httpx.post(served.url + "/v1/chat/completions", json={**body, **extra},
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert r.status_code == 200, r.text
        return r

    assert ask(first).headers["x-smartflow-cache"] == "MISS"
    hit = ask(second, stream=True)
    assert hit.headers["x-smartflow-cache"] == "HIT" and "data: [DONE]" in hit.text
    assert len(fake.requests) == 1
    health = httpx.get(second.url + "/health", timeout=5).json()
    assert health["metacache"] == {"ok": True, "backend": "redis", "mode": "exact"}
