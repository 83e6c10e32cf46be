"""GET /metrics: Prometheus text exposition 0.0.4, without auth (management port only)."""
import os

import prometheus_client
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # "text/plain; version=0.0.4; charset=utf-8" (CONTRACT)
# The OpenAPI description of GET /metrics, a plain Django view (smartflow/openapi.py adds it to the schema).
OPENAPI_PATHS = {"/metrics": {"get": {
    "operationId": "metrics_retrieve", "tags": ["metrics"], "summary": "Prometheus metrics",
    "description": "Prometheus text exposition 0.0.4 (`Content-Type: text/plain; version=0.0.4; charset=utf-8`), "
                   "every series with `# HELP` and `# TYPE`. Answers without auth.",
    "security": [],
    "responses": {"200": {"description": "The metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                  "405": {"description": "Only GET is served"}},
}}}


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
