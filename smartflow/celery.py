"""The Celery app; with no broker configured, tasks run in-process (eager).

With a broker (CELERY_BROKER_URL, or REDIS_URL), run a worker with the beat
schedule of settings.CELERY_BEAT_SCHEDULE (metrics roll-up, trace retention):

    celery -A smartflow.celery worker -B --loglevel=INFO

Without one, /metrics makes the roll-up on demand when it is stale, and
`manage.py purge_traces` applies the retention (e.g. from cron).
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smartflow.settings")

app = Celery("smartflow")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
