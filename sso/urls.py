"""SSO routes: the management API under /api/auth/sso/ and /api/teams, and the dashboard pages."""
from django.urls import path

from . import api, views

urlpatterns = [
    path("api/auth/sso/config", api.sso_config_view),
    path("api/auth/sso/test", api.sso_test_view),
    path("api/auth/sso/login", api.sso_login_view),
    path("api/auth/sso/callback", api.sso_callback_view),
    path("api/teams", api.teams_view),
    path("dashboard/sso_login.html", views.sso_login_page),
    path("dashboard/sso_config.html", views.sso_config_page),
    path("dashboard/logout", views.logout_view),
]
