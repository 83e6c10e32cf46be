"""Redis clients of the Redis-backed stores: the synchronous side (management reads and /health, off
the request path) and the request path's per-event-loop async clients."""
import asyncio

MAX_CONNECTIONS = 64  # per process and event loop; a call takes tens of microseconds


def loop_client(clients: dict, url: str, timeout: float, connect_timeout: float, scripts=()):
    """(client, semaphore, *registered scripts) of the running event loop (redis.asyncio binds to its
    loop), made once. Callers take a semaphore turn around every call: at most MAX_CONNECTIONS at
    once, the others wait. redis-py's pool would refuse the 101st (MaxConnectionsError, and the store
    backs off for everyone), its blocking pool costs ~20 us a call, and hundreds of connects at once
    time out; a semaphore's free path is nearly free."""
    loop = asyncio.get_running_loop()
    found = clients.get(loop)
    if found is None:
        import redis.asyncio as aioredis

        for gone in [other for other in clients if other.is_closed()]:
            del clients[gone]
        client = aioredis.Redis.from_url(url, max_connections=MAX_CONNECTIONS, socket_timeout=timeout,
                                         socket_connect_timeout=connect_timeout, retry_on_timeout=False)
        found = clients[loop] = (client, asyncio.Semaphore(MAX_CONNECTIONS),
                                 *(client.register_script(script) for script in scripts))
    return found


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
