"""URLs of the management port: admin, management API, dashboard, metrics."""
from django.contrib import admin
from django.urls import path

from traces import views as trace_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/vas/logs/<str:log_id>", trace_views.log_detail),
]
