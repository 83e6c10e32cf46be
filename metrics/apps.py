"""App config for metrics (Prometheus exposition and the roll-up)."""
from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"

    def ready(self):
        import prometheus_client

        from traces.recorder import recorder

        from .collector import collector
        from .store import counters

        # Live counters: noted on the request path, counted after each trace write.
        if counters.observe not in recorder.observers:
            recorder.observers.append(counters.observe)
        if counters.on_writer not in recorder.reporters:
            recorder.reporters.append(counters.on_writer)
        try:
            prometheus_client.REGISTRY.register(collector)
        except ValueError:  # already registered (ready() ran twice)
            pass
