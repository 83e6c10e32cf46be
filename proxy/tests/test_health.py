"""GET /health: 200 while the gateway can serve (degraded parts named), 503 only without the database."""
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from django.db import OperationalError

from conftest import free_port

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


def dead_redis(settings):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings.REDIS_URL = url
    settings.CACHES = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url,
                                   "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"}}}


def test_all_well_is_ok(gateway):
    r = httpx.get(gateway.proxy_url + "/health")
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok" and body["degraded"] == []
    assert body["database"]["ok"] and body["cache"]["ok"] and body["traces"]["ok"]
    assert {"backlog", "backlog_bytes", "write_failures", "dropped"} <= set(body["traces"])


def test_a_dead_redis_degrades_health_quickly_and_proxying_goes_on(gateway, proxy_client, settings):
    dead_redis(settings)
    began = time.monotonic()
    r = httpx.get(gateway.proxy_url + "/health", timeout=10)
    assert time.monotonic() - began < settings.SMARTFLOW_HEALTH_TIMEOUT + 1
    body = r.json()
    assert r.status_code == 200 and body["status"] == "degraded" and body["degraded"] == ["cache", "limits"]
    assert body["cache"] == {"ok": False, "error": "ConnectionError", "backend": "redis"}
    assert body["database"]["ok"]
    assert proxy_client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_hanging_dependency_answers_timeout_within_the_bound(gateway, monkeypatch, settings):
    from proxy import views

    settings.SMARTFLOW_HEALTH_TIMEOUT = 0.5
    monkeypatch.setattr(views, "_check_cache", lambda: time.sleep(3))
    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:  # probes at once share the one hanging check
        answers = list(pool.map(lambda _: httpx.get(gateway.proxy_url + "/health", timeout=10), range(4)))
    assert time.monotonic() - began < 2.5
    for r in answers:
        assert r.status_code == 200 and r.json()["cache"]["error"] == "timeout"


def test_without_its_database_the_gateway_cannot_serve_and_says_503(gateway, monkeypatch):
    from proxy import views

    def unreachable():
        raise OperationalError("connection refused")

    monkeypatch.setattr(views, "_check_database", unreachable)
    r = httpx.get(gateway.proxy_url + "/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable" and "database" in body["degraded"]
    assert body["database"]["error"] == "OperationalError"
