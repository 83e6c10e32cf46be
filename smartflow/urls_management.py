"""URLs of the management port: admin, management API and its schema, dashboard, metrics."""
from pathlib import Path

import drf_spectacular_sidecar
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

import smartflow.openapi  # noqa: F401 (registers the auth schemes with drf-spectacular)
from proxy.cache.api import cache_view
from proxy.guardrails.api import guardrail_view, guardrails_view
from proxy.routing_policies.api import policies_view, policy_view

# Swagger UI's own files, bundled in the package (nothing is fetched from a CDN).
SIDECAR_FILES = Path(drf_spectacular_sidecar.__file__).parent / "static" / "drf_spectacular_sidecar"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    re_path(r"^static/drf_spectacular_sidecar/(?P<path>.+)$", serve, {"document_root": SIDECAR_FILES}),
    path("api/cache", cache_view, name="cache"),
    path("api/guardrails", guardrails_view, name="guardrails"),
    path("api/guardrails/<str:name>", guardrail_view, name="guardrail"),
    path("api/routing/policies", policies_view, name="routing-policies"),
    path("api/routing/policies/<str:name>", policy_view, name="routing-policy"),
    path("", include("traces.urls")),
    path("", include("sso.urls")),
    path("", include("metrics.urls")),
]
