"""URLs of the management port: admin, management API, dashboard, metrics."""
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("traces.urls")),
    path("", include("sso.urls")),
    path("", include("metrics.urls")),
]
