"""App config for SSO (OIDC sign-in, group-to-team sync)."""
from django.apps import AppConfig


class SsoConfig(AppConfig):
    name = "sso"
