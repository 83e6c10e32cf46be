"""App config for metrics (Prometheus exposition and the roll-up)."""
from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"
