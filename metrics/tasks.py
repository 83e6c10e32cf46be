"""Celery tasks of the metrics app: the periodic roll-up."""
from smartflow.celery import app

from . import rollup as rollups


@app.task(name="metrics.rollup")
def rollup() -> dict:
    return rollups.refresh()
