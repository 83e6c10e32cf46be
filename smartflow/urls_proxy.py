"""URLs of the proxy port (the chat endpoints themselves are served by proxy.views.PROXY_ROUTES)."""
from django.urls import path

from proxy import views

urlpatterns = [
    path("health", views.health),
    path("v1/models", views.models),
]

handler404 = "smartflow.errors.not_found_openai"
