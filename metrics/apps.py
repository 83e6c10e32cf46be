"""App config for metrics (Prometheus exposition and the roll-up)."""
from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"

    def ready(self):
        import prometheus_client

        from traces.recorder import recorder

        from .collector import collector
        from .store import counters

        # Live counters: noted on the request path, counted with each trace batch.
        if counters.observe not in recorder.observers:
            recorder.observers.append(counters.observe)
        if counters.on_batch not in recorder.listeners:
            recorder.listeners.append(counters.on_batch)
        try:
            prometheus_client.REGISTRY.register(collector)
        except ValueError:  # already registered (ready() ran twice)
            pass
