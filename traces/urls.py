"""Trace API and dashboard routes (management port)."""
from django.urls import path

from . import views

urlpatterns = [
    path("api/vas/logs", views.log_list, name="vaslog-list"),
    path("api/vas/logs/<str:log_id>", views.log_detail, name="vaslog-detail"),
    path("dashboard/traces.html", views.traces_page, name="traces-page"),
]
