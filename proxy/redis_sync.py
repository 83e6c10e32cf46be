"""The synchronous side of a Redis-backed store: management reads and /health (off the request path)."""


class SyncRedis:
    """For a class with `url`, `backend` and `_sync = None`: one blocking client, and a ping for /health."""

    def sync(self):
        if self._sync is None:
            import redis

            self._sync = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        return self._sync

    def status(self) -> dict:
        """For /health: a ping (from the health check's thread)."""
        try:
            self.sync().ping()
        except Exception as exc:
            return {"ok": False, "backend": self.backend, "error": type(exc).__name__}
        return {"ok": True, "backend": self.backend}
