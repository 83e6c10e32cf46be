"""App config for the proxy: keys, teams, routing and provider adapters."""
from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"

    def ready(self):
        from . import checks  # noqa: F401  (registers system checks)
