"""Dashboard pages: the sign-in page (SSO buttons and the API-key fallback) and the SSO config page."""
from __future__ import annotations

import logging

from django.contrib.auth import get_user_model, logout
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods, require_POST

from proxy.auth import authenticate_sync

from . import config as sso_config
from .flow import LOGIN_PAGE, SESSION_BACKEND
from .sessions import key_username, sign_in_with_key

log = logging.getLogger(__name__)

DASHBOARD = "/dashboard/traces.html"
LABELS = {"entra": "Microsoft", "okta": "Okta", "oidc": "OpenID Connect"}


def _next(request) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return DASHBOARD


def _key_user(principal):
    """The staff user a key signs in as: one per admin key, so the admin log shows who did what.
    None when an SSO user holds the name (promoting them would hand an IdP account staff rights)."""
    User = get_user_model()
    user, created = User.objects.get_or_create(username=key_username(principal), defaults={"is_staff": True})
    if user.sso_identities.exists():  # an IdP named a user so before these names were reserved
        return None
    if created:
        user.set_unusable_password()
    user.is_staff, user.is_active = True, True
    user.is_superuser = principal.is_master  # the master key also opens the Django admin
    user.save()
    return user


@ensure_csrf_cookie
@require_http_methods(["GET", "POST"])
def sso_login_page(request):
    config = sso_config.load()
    providers = [{"name": p.name, "type": p.type, "label": f"{LABELS[p.type]} ({p.name})"}
                 for p in config.providers]
    context = {"providers": providers, "next": _next(request), "key_error": ""}
    if request.method == "POST":
        raw_key = request.POST.get("api_key", "").strip()
        principal = authenticate_sync(raw_key)
        if principal is None or not principal.is_admin:
            log.warning("Dashboard key sign-in refused")
            context["key_error"] = ("That key was not accepted: use the master key or an admin key "
                                    "(a team's ordinary key cannot open the dashboard).")
            return render(request, "dashboard/sso_login.html", context, status=401)
        user = _key_user(principal)
        if user is None:
            log.error("Dashboard key sign-in refused: account '%s' belongs to an SSO user", key_username(principal))
            context["key_error"] = (f"The account '{key_username(principal)}' belongs to an SSO user: rename that "
                                    "user in the admin, then sign in with the key again.")
            return render(request, "dashboard/sso_login.html", context, status=409)
        # The session ends with the key (revoked, or a new master key): sso/sessions.py.
        sign_in_with_key(request, user, raw_key, SESSION_BACKEND)
        return HttpResponseRedirect(_next(request))
    return render(request, "dashboard/sso_login.html", context)


@ensure_csrf_cookie
def sso_config_page(request):
    if not (request.user.is_authenticated and request.user.is_staff):
        return HttpResponseRedirect(f"{LOGIN_PAGE}?next=/dashboard/sso_config.html")
    return render(request, "dashboard/sso_config.html", {"host": request.build_absolute_uri("/").rstrip("/")})


@require_POST
def logout_view(request):
    logout(request)
    return HttpResponseRedirect(LOGIN_PAGE)
