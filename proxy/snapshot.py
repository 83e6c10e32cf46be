"""In-memory snapshots of configuration kept in the database, refreshed off the hot path.

The request path reads the last snapshot; when it is older than
SMARTFLOW_CONFIG_TTL, one refresh runs in a worker thread while other
requests keep using the previous value.
"""
import asyncio
import time
from typing import Callable, Generic, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

T = TypeVar("T")


def _fresh_connection(loader):
    def run():
        close_old_connections()
        return loader()
    return run


class Snapshot(Generic[T]):
    def __init__(self, loader: Callable[[], T]):
        self._loader = loader
        self._value: T | None = None
        self._expires = 0.0
        self._refresh: asyncio.Future | None = None

    async def get(self) -> T:
        if time.monotonic() < self._expires:
            return self._value  # type: ignore[return-value]
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._reload())
        if self._value is None:
            return await asyncio.shield(self._refresh)
        return self._value

    def get_sync(self) -> T:
        if time.monotonic() >= self._expires:
            self._store(self._loader())
        return self._value  # type: ignore[return-value]

    async def _reload(self) -> T:
        value = await sync_to_async(_fresh_connection(self._loader), thread_sensitive=False)()
        self._store(value)
        return value

    def _store(self, value: T):
        self._value = value
        self._expires = time.monotonic() + settings.SMARTFLOW_CONFIG_TTL

    def last(self) -> T | None:
        """The last value loaded, however old, without loading (None before the first load)."""
        return self._value

    def invalidate(self):
        self._expires = 0.0
