"""App config for traces: the VASLog and its writer."""
from django.apps import AppConfig


class TracesConfig(AppConfig):
    name = "traces"
