"""The roll-up behind the gauges: on demand without a worker, and by a real Celery beat + worker on Redis."""
import subprocess
import time
import uuid

import pytest
from django.conf import settings
from django.core.cache import cache
from prometheus_client.parser import text_string_to_metric_families

from metrics import rollup
from traces.tests.conftest import make_log

from .helpers import PYTHON, ROOT, child_env


def gauges(client) -> dict[str, float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    return {s.name: s.value for f in text_string_to_metric_families(r.content.decode()) for s in f.samples
            if s.name.startswith(("smartflow_latency", "smartflow_cache_hit_rate", "smartflow_rollup"))}


def create(latencies, caches=None):
    from traces.models import VASLog

    caches = caches or ["bypass"] * len(latencies)
    VASLog.objects.bulk_create([make_log(latency_ms=ms, cache=c) for ms, c in zip(latencies, caches)])


def test_it_rolls_up_the_last_thousand_logs_on_demand(client, db):
    create([99_000.0] * 50)  # older than the window: ignored
    create([float(ms) for ms in range(1, 1001)], ["hit"] * 300 + ["miss"] * 100 + ["bypass"] * 600)
    g = gauges(client)
    assert g["smartflow_latency_p50_seconds"] == pytest.approx(0.500)
    assert g["smartflow_latency_p90_seconds"] == pytest.approx(0.900)
    assert g["smartflow_latency_p99_seconds"] == pytest.approx(0.990)
    assert g["smartflow_cache_hit_rate"] == pytest.approx(0.75)
    assert g["smartflow_rollup_age_seconds"] < 5


def test_it_uses_a_fresh_stored_roll_up_and_replaces_a_stale_one(client, db):
    create([10.0, 20.0, 30.0])
    cache.set(rollup.cache_key(), {"p50": 7.0, "p90": 8.0, "p99": 9.0, "hit_rate": 0.5, "count": 3,
                                   "computed_at": time.time()}, None)
    assert gauges(client)["smartflow_latency_p50_seconds"] == 7.0  # fresh: not recomputed per scrape
    stale = time.time() - 3 * settings.SMARTFLOW_METRICS_ROLLUP_SECONDS
    cache.set(rollup.cache_key(), {"p50": 7.0, "p90": 8.0, "p99": 9.0, "hit_rate": 0.5, "count": 3,
                                   "computed_at": stale}, None)
    assert gauges(client)["smartflow_latency_p50_seconds"] == pytest.approx(0.020)


def test_an_empty_table_gives_zeros(client, db):
    g = gauges(client)
    assert g["smartflow_latency_p99_seconds"] == 0 and g["smartflow_cache_hit_rate"] == 0


def test_the_task_runs_in_process_without_a_broker(db, settings):
    from metrics.tasks import rollup as task
    from smartflow.celery import app

    create([5.0, 15.0])
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        result = task.delay().get()
    finally:
        app.conf.task_always_eager = eager
    assert result["count"] == 2 and cache.get(rollup.cache_key())["p99"] == pytest.approx(0.015)


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis (REDIS_URL) as the Celery broker")
def test_a_real_celery_beat_and_worker_keep_the_roll_up_fresh(transactional_db, tmp_path):
    create([float(ms) for ms in range(10, 210, 10)], ["hit"] * 5 + ["miss"] * 15)
    queue = f"smartflow-test-{uuid.uuid4().hex[:8]}"  # our worker takes only our tasks
    env = child_env(SMARTFLOW_METRICS_ROLLUP_SECONDS=1, SMARTFLOW_CELERY_QUEUE=queue,
                    CELERY_BROKER_URL=settings.REDIS_URL)
    with open(tmp_path / "worker.log", "w") as log_file:
        worker = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "smartflow.celery", "worker", "-B", "--pool=solo", "-Q", queue,
             "-s", str(tmp_path / "beat-schedule"), "--loglevel=INFO"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        value = None
        while time.monotonic() < deadline and worker.poll() is None:
            value = cache.get(rollup.cache_key())
            if value and value["count"] == 20:
                break
            time.sleep(0.2)
        log = (tmp_path / "worker.log").read_text()
        assert value and value["count"] == 20, log[-3000:]
        assert value["p50"] == pytest.approx(0.100) and value["hit_rate"] == pytest.approx(0.25)
        first = value["computed_at"]
        # beat keeps refreshing it
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and cache.get(rollup.cache_key())["computed_at"] == first:
            time.sleep(0.2)
        assert cache.get(rollup.cache_key())["computed_at"] > first
        assert "metrics.rollup" in (tmp_path / "worker.log").read_text()
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
