"""WebSocket /ws/traces (management port): new trace rows for signed-in dashboards, each its teams' rows."""
import asyncio
import time
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model

from sso.sessions import SESSION_KEY, ais_key_live
from sso.teams import visible_teams

from . import live


def same_origin(scope) -> bool:
    """Browsers send Origin on WebSockets; refuse pages of other sites (cross-site hijacking)."""
    headers = dict(scope.get("headers") or ())
    origin = headers.get(b"origin")
    if origin is None:
        return True  # not a browser
    host = headers.get(b"host", b"").decode("latin-1")
    return urlsplit(origin.decode("latin-1")).netloc == host


def standing(user_id) -> tuple[bool, frozenset[str] | None]:
    """(still active, visible teams) read from the database, as every HTTP request reads them."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    return (False, frozenset()) if user is None else (True, visible_teams(user))


class TracesConsumer(AsyncJsonWebsocketConsumer):
    groups = []
    teams: frozenset[str] | None = frozenset()  # whose rows this dashboard gets; None: every team's
    key_digest: str | None = None  # the session was opened with this key (sso/sessions.py)
    recheck_at = 0.0  # the user's standing is read again after this (monotonic)

    async def connect(self):
        user, session = self.scope.get("user"), self.scope.get("session")
        if user is None or not user.is_authenticated or session is None or not same_origin(self.scope):
            await self.close(code=4403)
            return
        self.key_digest = await session.aget(SESSION_KEY)
        if not await ais_key_live(self.key_digest):
            await self.close(code=4403)
            return
        self.teams = await database_sync_to_async(visible_teams)(self.scope["user"])
        self.recheck_at = time.monotonic() + settings.SMARTFLOW_CONFIG_TTL
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
        if not await ais_key_live(self.key_digest):  # cached: a dict look-up until the TTL runs out
            await self.close(code=4401)
            return
        if time.monotonic() >= self.recheck_at:  # deactivated, demoted, or moved out of a team since
            active, self.teams = await database_sync_to_async(standing)(self.scope["user"].pk)
            self.recheck_at = time.monotonic() + settings.SMARTFLOW_CONFIG_TTL
            if not active:
                await self.close(code=4401)
                return
        rows = event["rows"]
        if self.teams is not None:
            rows = [row for row in rows if row["team"] in self.teams]
        if rows:
            await self.send_json({"type": "rows", "rows": rows})
