"""Startup checks: bad settings fail loudly at boot, not on the first request."""
from urllib.parse import urlparse

from django.conf import settings
from django.core.checks import Error, register


@register()
def check_settings(app_configs, **kwargs):
    errors = []
    for provider, url in settings.SMARTFLOW_BASE_URLS.items():
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            errors.append(Error(f"SMARTFLOW_{provider.upper()}_BASE_URL is not an http(s) URL: {url!r}",
                                id="smartflow.E001"))
    if settings.SMARTFLOW_PROXY_PORT == settings.SMARTFLOW_MANAGEMENT_PORT:
        errors.append(Error("SMARTFLOW_PROXY_PORT and SMARTFLOW_MANAGEMENT_PORT must differ.", id="smartflow.E002"))
    if min(settings.SMARTFLOW_UPSTREAM_TIMEOUT, settings.SMARTFLOW_ROUTING_TIMEOUT,
           settings.SMARTFLOW_MAX_BODY_BYTES) <= 0:
        errors.append(Error("SMARTFLOW_UPSTREAM_TIMEOUT, SMARTFLOW_ROUTING_TIMEOUT and SMARTFLOW_MAX_BODY_BYTES "
                            "must be positive.",
                            id="smartflow.E003"))
    master = settings.SMARTFLOW_MASTER_KEY
    if master and not master.startswith("sk-sf-"):
        errors.append(Error("SMARTFLOW_MASTER_KEY must start with 'sk-sf-'.", id="smartflow.E004"))
    return errors
