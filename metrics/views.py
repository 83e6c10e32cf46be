"""GET /metrics: Prometheus text exposition 0.0.4, without auth (management port only)."""
import os

import prometheus_client
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # "text/plain; version=0.0.4; charset=utf-8" (CONTRACT)


def _registry():
    # django-prometheus's own metrics follow its multiprocess mode when that is set up.
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from .collector import collector

        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(collector)
        return registry
    return prometheus_client.REGISTRY


@require_GET
def metrics(request):
    return HttpResponse(prometheus_client.generate_latest(_registry()), content_type=CONTENT_TYPE)
