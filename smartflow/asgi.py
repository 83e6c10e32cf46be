"""The one ASGI application behind both ports.

On the proxy port, the chat endpoints are served by a lean handler (no Django
request cycle on the hot path); everything else goes through Django with the
URLconf of the port it arrived on. WebSockets (management port) go to channels.
"""
import gc
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smartflow.settings")
GC_YOUNG_THRESHOLD = 5000
SWITCH_INTERVAL_S = 0.0005

from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from channels.routing import URLRouter  # noqa: E402

from django.conf import settings  # noqa: E402

from proxy import upstream  # noqa: E402
from proxy.limits import counters as limit_counters  # noqa: E402
from smartflow import looplag  # noqa: E402
from proxy.views import PROXY_ROUTES  # noqa: E402
from smartflow.ports import role_for  # noqa: E402
from traces.recorder import recorder  # noqa: E402

try:
    from smartflow.websockets import websocket_urlpatterns
except ImportError:  # no live channels yet
    websocket_urlpatterns = []

websocket_app = URLRouter(websocket_urlpatterns) if websocket_urlpatterns else None


async def application(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        if role_for(scope) == "proxy":
            handler = PROXY_ROUTES.get((scope["method"], scope["path"]))
            if handler is not None:
                return await handler(scope, receive, send)
        return await django_app(scope, receive, send)
    if kind == "websocket":
        if role_for(scope) == "management" and websocket_app is not None:
            return await websocket_app(scope, receive, send)
        await send({"type": "websocket.close", "code": 4404})
        return
    if kind == "lifespan":
        await lifespan(receive, send)


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # Everything loaded so far lives for the process: keep it out of the
            # cyclic GC, whose full passes over Django's heap stalled requests (p99).
            gc.collect()
            gc.freeze()
            # A young-generation pass walks every young object still alive, and under load that is
            # every request in flight: a pass every 700 allocations (the default) cost the limits'
            # path alone ~8 us a request. Cyclic garbage waits a little longer; refcounting frees the rest.
            gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
            # The trace writer's thread turns a batch into rows in Python, holding the GIL until the
            # interpreter makes it let go (every 5 ms by default): the loop waited that long, and it
            # was the p99 at c=1 (5.3 to 5.9 ms in every run; 4.0 to 4.2 with this).
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            recorder.start()
            looplag.start(settings.SMARTFLOW_LOOP_LAG_FILE)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # A graceful stop writes every trace still in memory and reports the limits' slices.
            await recorder.stop()
            await limit_counters.drain()
            await upstream.close()
            await send({"type": "lifespan.shutdown.complete"})
            return

