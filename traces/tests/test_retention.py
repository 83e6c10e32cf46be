"""Retention: logs older than SMARTFLOW_TRACE_RETENTION_DAYS go, in bounded batches."""
from datetime import timedelta

from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from traces.models import VASLog
from traces.retention import purge


def test_it_deletes_only_logs_past_the_retention_period(logs, settings):
    settings.SMARTFLOW_TRACE_RETENTION_DAYS = 30
    now = timezone.now()
    logs(7, timestamp=now - timedelta(days=31))
    kept = logs(3, timestamp=now - timedelta(days=29))
    assert purge(batch_size=3) == 7
    assert sorted(VASLog.objects.values_list("id", flat=True)) == sorted(k.id for k in kept)


def test_each_round_reads_and_deletes_at_most_a_batch(logs):
    logs(10, timestamp=timezone.now() - timedelta(days=100))
    with CaptureQueriesContext(connection) as queries:
        assert purge(days=30, batch_size=4) == 10
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert selects and all("LIMIT 4" in sql for sql in selects)
    assert purge(days=30, batch_size=4, max_batches=1) == 0


def test_zero_days_keeps_everything(logs):
    logs(2, timestamp=timezone.now() - timedelta(days=400))
    assert purge(days=0) == 0 and VASLog.objects.count() == 2


def test_the_command_and_the_task_purge(logs, settings, capsys):
    from smartflow.celery import app
    from traces.tasks import purge_old_logs

    old = timezone.now() - timedelta(days=90)
    logs(3, timestamp=old)
    call_command("purge_traces", "--days", "60", "--batch-size", "2")
    assert "Deleted 3 VAS log(s)." in capsys.readouterr().out
    logs(2, timestamp=old)
    settings.SMARTFLOW_TRACE_RETENTION_DAYS = 60
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        assert purge_old_logs.delay().get() == 2
    finally:
        app.conf.task_always_eager = eager
    assert VASLog.objects.count() == 0
    assert "traces-retention" in settings.CELERY_BEAT_SCHEDULE
