"""Celery tasks of the traces app: retention."""
from smartflow.celery import app

from . import retention


@app.task(name="traces.purge_old_logs")
def purge_old_logs() -> int:
    return retention.purge()
