"""WebSocket routes (management port)."""
websocket_urlpatterns = []
