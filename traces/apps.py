"""App config for traces: the VASLog, its writer, and the live dashboard feed."""
from django.apps import AppConfig


class TracesConfig(AppConfig):
    name = "traces"

    def ready(self):
        from .live import broadcast
        from .recorder import recorder

        if broadcast not in recorder.listeners:
            recorder.listeners.append(broadcast)
