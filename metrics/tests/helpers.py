"""Helpers for running real processes (a Celery worker, a second gateway process) on the test database."""
import os
import sys
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """The URL of the database this test run uses (the test database, not the configured one)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def child_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(DATABASE_URL=database_url(), DJANGO_SETTINGS_MODULE="smartflow.settings",
               SMARTFLOW_METRICS_PREFIX=settings.SMARTFLOW_METRICS_PREFIX, PYTHONPATH=str(ROOT))
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
        # The same cache namespace as this process, whatever the environment says.
        env["SMARTFLOW_CACHE_PREFIX"] = settings.CACHES["default"].get("KEY_PREFIX", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


PYTHON = sys.executable
