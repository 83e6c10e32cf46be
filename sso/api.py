"""The SSO management API (DRF): config, connection test, sign-in start and callback, teams."""
from __future__ import annotations

import logging

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.response import Response

from proxy import limits
from proxy.models import Team
from smartflow.openapi import AUTH_ERRORS, bad_request

from . import config as sso_config
from . import flow, oidc
from . import openapi as doc
from .checks import test_provider
from .errors import SsoError
from .teams import team_as_dict

log = logging.getLogger(__name__)


class IsAdmin(BasePermission):
    """The master key, an admin virtual key, or a staff user (session or JWT)."""

    message = "Admin only: use the master key, an admin key, or sign in as an administrator."

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_authenticated and user.is_staff)


def error_response(err: SsoError) -> Response:
    return Response(err.as_dict(), status=err.status)


def config_answer(config: sso_config.SsoConfig) -> dict:
    body = config.as_dict()
    for provider, shown in zip(config.providers, body["providers"]):
        shown["client_secret_configured"] = bool(provider.client_secret()[0])
        if oidc.is_derived(provider):
            e = oidc.derived_entra(provider)
            shown["derived"] = {"issuer": e.issuer, "jwks_uri": e.jwks_uri,
                                "authorization_endpoint": e.authorization_endpoint,
                                "token_endpoint": e.token_endpoint}
        else:
            shown["derived"] = {"discovery_url": oidc.discovery_url(provider)}
    return body


@extend_schema(methods=["GET"], summary="The SSO config (secrets never included)", tags=["sso"],
               responses={200: doc.SsoConfigSerializer, **AUTH_ERRORS})
@extend_schema(methods=["POST"], summary="Replace the SSO config", tags=["sso"], request=doc.SsoConfigSerializer,
               description="Validated as a whole; takes effect at once; the same body twice gives the same state. "
                           "A GET answer posted back is accepted (its read-only fields are ignored). Admin only.",
               responses={200: doc.SsoConfigSerializer, 400: bad_request(doc.ConfigErrorSerializer, "SsoConfigError"),
                          **AUTH_ERRORS})
@api_view(["GET", "POST"])
@permission_classes([IsAdmin])
def sso_config_view(request):
    if request.method == "POST":
        try:
            config = sso_config.parse(request.data)
        except sso_config.ConfigError as exc:
            return Response({"success": False, "error": "Invalid SSO config: " + str(exc), "errors": exc.errors},
                            status=400)
        sso_config.save(config)
        log.info("SSO config saved: providers %s", [p.name for p in config.providers])
        return Response(config_answer(config))
    return Response(config_answer(sso_config.load()))


@extend_schema(summary="Test a provider's discovery and keys", tags=["sso"], request=doc.TEST_REQUEST,
               description="A saved provider by name, or a whole provider object before saving. Discovery and JWKS "
                           "are fetched for real. Admin only.",
               responses={200: doc.TestResultSerializer, 400: bad_request(doc.TestErrorSerializer, "SsoTestError"),
                          404: doc.TestErrorSerializer, **AUTH_ERRORS})
@api_view(["POST"])
@permission_classes([IsAdmin])
def sso_test_view(request):
    body = request.data if isinstance(request.data, dict) else {}
    if "type" in body:  # a whole provider object, tested before saving
        errors: list[str] = []
        provider = sso_config.parse_provider(body, "provider", errors)
        if errors:
            return Response({"success": False, "error": "; ".join(errors),
                             "steps": [{"name": "config", "ok": False, "detail": "; ".join(errors)}]}, status=400)
    else:
        name = body.get("provider")
        if not isinstance(name, str) or not name:
            return Response({"success": False, "steps": [],
                             "error": "Send {\"provider\": NAME} for a saved provider, or a whole provider "
                                      "object to test before saving."}, status=400)
        try:
            provider = flow.provider_or_404(name)
        except SsoError as err:
            return Response({**err.as_dict(), "steps": []}, status=err.status)
    steps = test_provider(provider)
    return Response({"success": all(s["ok"] for s in steps), "steps": steps})


@extend_schema(summary="Start an SSO sign-in", tags=["sso"], parameters=doc.LOGIN_PARAMETERS,
               description="Answers the IdP's authorize URL and sets the cookie binding the sign-in to this browser.",
               responses={200: doc.LoginSerializer, 404: doc.SsoErrorSerializer, 502: doc.SsoErrorSerializer})
@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
def sso_login_view(request):
    try:
        start = flow.start_login(request.query_params.get("provider"),
                                 request.build_absolute_uri(flow.LOGIN_PAGE),
                                 request.COOKIES.get(flow.BINDING_COOKIE))
    except SsoError as err:
        log.warning("SSO login refused: %s", err.code)
        return error_response(err)
    response = Response({"auth_url": start.auth_url})
    response.set_cookie(flow.BINDING_COOKIE, start.binding, max_age=start.expires_in + 300, httponly=True,
                        samesite="Lax", secure=request.is_secure() or settings.SESSION_COOKIE_SECURE, path="/")
    return response


@extend_schema(summary="Finish an SSO sign-in", tags=["sso"], parameters=doc.CALLBACK_PARAMETERS,
               description="Exchanges the code, verifies the id_token, syncs groups to teams, signs the browser in "
                           "and returns a Smartflow JWT.",
               responses={200: doc.CallbackSerializer,
                          **{code: doc.SsoErrorSerializer for code in (400, 401, 403, 502)}})
@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
def sso_callback_view(request):
    q = request.query_params
    try:
        signin = flow.finish_login(request._request, q.get("code"), q.get("state"),
                                   request.COOKIES.get(flow.BINDING_COOKIE), q.get("error"),
                                   q.get("error_description"))
    except SsoError as err:
        log.warning("SSO callback refused: %s", err.code)
        return error_response(err)
    user = signin.user
    response = Response({
        "token": signin.token,
        "user": {"id": user.pk, "username": user.get_username(), "email": user.email,
                 "name": user.get_full_name(), "provider": signin.provider, "is_staff": user.is_staff},
        "teams": signin.sync.teams,
    })
    response.delete_cookie(flow.BINDING_COOKIE, path="/")
    return response


@extend_schema(summary="Teams", tags=["teams"], description="Every team for an admin; a member's own teams.",
               responses={200: doc.TeamListSerializer, **AUTH_ERRORS})
@api_view(["GET"])
@permission_classes([IsAuthenticated])
def teams_view(request):
    teams = Team.objects.prefetch_related("members").order_by("name")
    if not request.user.is_staff:  # a signed-in member sees their own teams
        teams = teams.filter(members=request.user)
    teams = list(teams)
    spent = limits.sync_spend(teams)  # live, and the stored copy follows (off the request path)
    return Response({"success": True, "data": [team_as_dict(t, spent[t.pk]) for t in teams]})
