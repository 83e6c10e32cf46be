"""WebSocket /ws/traces (management port): new trace rows for signed-in dashboards."""
import asyncio
from urllib.parse import urlsplit

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import live


def same_origin(scope) -> bool:
    """Browsers send Origin on WebSockets; refuse pages of other sites (cross-site hijacking)."""
    headers = dict(scope.get("headers") or ())
    origin = headers.get(b"origin")
    if origin is None:
        return True  # not a browser
    host = headers.get(b"host", b"").decode("latin-1")
    return urlsplit(origin.decode("latin-1")).netloc == host


class TracesConsumer(AsyncJsonWebsocketConsumer):
    groups = []

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not same_origin(self.scope):
            await self.close(code=4403)
            return
        live.consumer_joined(asyncio.get_running_loop())
        await self.channel_layer.group_add(live.GROUP, self.channel_name)
        self.joined = True
        await self.accept()
        await self.send_json({"type": "hello"})

    async def disconnect(self, code):
        if getattr(self, "joined", False):
            live.consumer_left()
            await self.channel_layer.group_discard(live.GROUP, self.channel_name)

    async def traces_batch(self, event):
        await self.send_json({"type": "rows", "rows": event["rows"]})
