"""WebSocket routes (management port); smartflow/asgi.py mounts them."""
from channels.auth import AuthMiddlewareStack
from django.urls import path

from traces.consumers import TracesConsumer

websocket_urlpatterns = [
    # The Django session (the dashboard's sign-in) identifies the browser.
    path("ws/traces", AuthMiddlewareStack(TracesConsumer.as_asgi())),
]
