"""The store every gateway process shares for SSO: Redis when REDIS_URL is set, else the database.

Values are JSON. ``pop`` is atomic, so a pending sign-in can be used once only,
whichever process the callback lands on.
"""
from __future__ import annotations

import datetime as dt
import json

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

PREFIX = "sso:"


class RedisStore:
    def __init__(self):
        from django_redis import get_redis_connection

        self.redis = get_redis_connection("default")
        self.prefix = f"{settings.CACHES['default'].get('KEY_PREFIX', 'smartflow')}:{PREFIX}"

    def get(self, key: str):
        raw = self.redis.get(self.prefix + key)
        return None if raw is None else json.loads(raw)

    def set(self, key: str, value, ttl: float | None = None):
        self.redis.set(self.prefix + key, json.dumps(value), px=int(ttl * 1000) if ttl else None)

    def pop(self, key: str):
        raw = self.redis.getdel(self.prefix + key)
        return None if raw is None else json.loads(raw)

    def delete(self, key: str):
        self.redis.delete(self.prefix + key)


class DatabaseStore:
    def _live(self):
        from .models import SsoEntry

        now = timezone.now()
        return SsoEntry.objects.exclude(expires_at__lte=now)

    def get(self, key: str):
        row = self._live().filter(key=key).values_list("value", flat=True).first()
        return row

    def set(self, key: str, value, ttl: float | None = None):
        from .models import SsoEntry

        expires = timezone.now() + dt.timedelta(seconds=ttl) if ttl else None
        # Expired sign-ins are swept on write, so the table stays small without a job.
        SsoEntry.objects.filter(expires_at__lte=timezone.now()).delete()
        try:
            with transaction.atomic():
                SsoEntry.objects.update_or_create(key=key, defaults={"value": value, "expires_at": expires})
        except IntegrityError:  # two processes saving the same key at once: last write wins
            SsoEntry.objects.filter(key=key).update(value=value, expires_at=expires)

    def pop(self, key: str):
        from .models import SsoEntry

        value = self._live().filter(key=key).values_list("value", flat=True).first()
        if value is None:
            return None
        # Only the caller whose DELETE removed the row may use it (single use across processes).
        deleted, _ = SsoEntry.objects.filter(key=key).delete()
        return value if deleted else None

    def delete(self, key: str):
        from .models import SsoEntry

        SsoEntry.objects.filter(key=key).delete()


def store() -> RedisStore | DatabaseStore:
    backend = settings.CACHES.get("default", {}).get("BACKEND", "")
    if getattr(settings, "REDIS_URL", "") and backend.startswith("django_redis"):
        return RedisStore()
    return DatabaseStore()
