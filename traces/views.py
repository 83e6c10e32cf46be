"""The VAS log management API and the traces dashboard page."""
import re

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from proxy.routing import PROVIDER_NAMES
from smartflow.openapi import AUTH_ERRORS, ErrorSerializer
from sso.teams import visible_teams

from . import openapi as doc
from .models import VASLog, as_dict
from .queries import CACHE_VALUES, COMPLIANCE_VALUES, BadQuery, ListParams, filter_logs, in_teams
from .recorder import recorder

LOGIN_URL = "/dashboard/sso_login.html"
_ID = re.compile(r"[0-9a-f]{1,32}")


@extend_schema(operation_id="vas_logs_list", summary="VAS logs, newest first", tags=["traces"], parameters=doc.LIST_PARAMETERS,
               responses={200: doc.LogListSerializer, 400: ErrorSerializer, **AUTH_ERRORS})
@api_view(["GET"])
def log_list(request):
    try:
        page = filter_logs(request.query_params, visible_teams(request.user))
    except BadQuery as err:
        return Response({"success": False, "error": str(err)}, status=400)
    return Response(page.as_body())


@extend_schema(summary="One VAS log", tags=["traces"],
               responses={200: doc.LogDetailSerializer, 404: ErrorSerializer, **AUTH_ERRORS})
@api_view(["GET"])
def log_detail(request, log_id: str):
    teams = visible_teams(request.user)
    # Ids are hex; anything else (a NUL, which PostgreSQL refuses in a query) cannot exist.
    log = in_teams(VASLog.objects.filter(pk=log_id), teams).first() if _ID.fullmatch(log_id) else None
    if log is None:
        pending = recorder.find(log_id)
        # Another team's trace answers exactly as a missing one: ids are not to be probed.
        if pending is None or not (teams is None or pending.get("team") in teams):
            return Response({"success": False, "error": f"No VAS log with id '{log_id}'."}, status=404)
        log = VASLog(**pending)
    return Response({"success": True, "data": as_dict(log)})


@login_required(login_url=LOGIN_URL)
def traces_page(request):
    """Server-rendered first page; the page's script refreshes it through the list API."""
    try:
        params = ListParams.parse(request.GET)
        error = ""
    except BadQuery as err:
        params, error = ListParams(), str(err)
    page = filter_logs(params, visible_teams(request.user))
    return render(request, "dashboard/traces.html", {
        "page": page, "body": page.as_body(), "params": params, "error": error,
        "providers": PROVIDER_NAMES, "cache_values": CACHE_VALUES,
        "compliance_values": COMPLIANCE_VALUES, "nav": "traces",
    })
