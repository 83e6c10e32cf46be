"""GET/POST /api/routing/policies and GET/PUT/DELETE /api/routing/policies/{name} (admin only).

A change takes effect at once on this process and within SMARTFLOW_CONFIG_TTL on the others."""
from django.db import IntegrityError, transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import ParseError
from rest_framework.response import Response

from proxy.models import RoutingPolicy
from smartflow.openapi import AUTH_ERRORS, DeletedSerializer, ErrorSerializer, envelope
from sso.api import IsAdmin

from . import spec


class TargetSerializer(serializers.Serializer):
    provider = serializers.ChoiceField(["openai", "anthropic", "gemini", "ollama"])
    model = serializers.CharField(required=False, allow_null=True,
                                  help_text="The model to call; left out: the client's model translated to the "
                                            "same tier.")
    weight = serializers.FloatField(required=False, help_text="weighted: this target's share (default 1).")


class RetrySerializer(serializers.Serializer):
    attempts = serializers.IntegerField(min_value=0, max_value=spec.MAX_ATTEMPTS,
                                        help_text="Extra tries of one target after its first (default 1).")
    backoff_ms = serializers.IntegerField(min_value=0, max_value=spec.MAX_BACKOFF_MS,
                                          help_text="Base of the exponential backoff with full jitter (default 250).")


class RoutingPolicySerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    strategy = serializers.ChoiceField(spec.STRATEGIES)
    targets = TargetSerializer(many=True)
    retry = RetrySerializer(required=False)
    failover_on = serializers.ListField(child=serializers.JSONField(), required=False,
                                        help_text='429, 5xx statuses, "timeout", "connect".')
    models = serializers.ListField(child=serializers.CharField(), required=False,
                                   help_text="Client model names it applies to; empty: all.")
    teams = serializers.ListField(child=serializers.CharField(), required=False,
                                  help_text="Team names; empty: all.")
    sticky = serializers.ChoiceField(["user"], allow_null=True, required=False)
    enabled = serializers.BooleanField(required=False)
    priority = serializers.IntegerField(required=False, help_text="Lowest first (default 100); ties by name.")


PolicyAnswerSerializer = envelope("RoutingPolicyAnswer", RoutingPolicySerializer)
PolicyListSerializer = envelope("RoutingPolicyList", RoutingPolicySerializer, many=True)


def _body(request, name: str | None = None) -> dict:
    """The validated policy in the request's body; Invalid for a body that is not one."""
    try:
        data = request.data
    except ParseError:
        raise spec.Invalid("The body must be a JSON object (it is not valid JSON).") from None
    return spec.validate(data, name)


def _error(message: str, status: int = 400) -> Response:
    return Response({"success": False, "error": message}, status=status)


def _save(data: dict, row: RoutingPolicy | None = None) -> RoutingPolicy:
    row = row or RoutingPolicy(name=data["name"])
    row.strategy, row.targets, row.retry = data["strategy"], data["targets"], data["retry"]
    row.failover_on, row.models, row.teams = data["failover_on"], data["models"], data["teams"]
    row.sticky, row.enabled, row.priority = data["sticky"] or "", data["enabled"], data["priority"]
    row.save()
    spec.reload()
    return row


def _answer(row: RoutingPolicy) -> dict:
    return spec.validate(spec.as_dict(row))


@extend_schema(methods=["GET"], operation_id="routing_policies_list", summary="The routing policies",
               tags=["routing"], responses={200: PolicyListSerializer, **AUTH_ERRORS})
@extend_schema(methods=["POST"], operation_id="routing_policies_create", summary="Add a routing policy",
               tags=["routing"], request=RoutingPolicySerializer,
               responses={200: PolicyAnswerSerializer, 400: ErrorSerializer,
                          409: OpenApiResponse(ErrorSerializer, "A policy of that name exists (PUT replaces it)."),
                          **AUTH_ERRORS})
@api_view(["GET", "POST"])
@permission_classes([IsAdmin])
def policies_view(request):
    if request.method == "GET":
        rows = RoutingPolicy.objects.order_by("priority", "name")
        return Response({"success": True, "data": [_answer(row) for row in rows]})
    try:
        data = _body(request)
    except spec.Invalid as err:
        return _error(str(err))
    try:
        with transaction.atomic():
            row = _save(data)
    except IntegrityError:
        return _error(f"'name': a policy named '{data['name']}' exists; PUT /api/routing/policies/{data['name']} "
                      "replaces it.", 409)
    return Response({"success": True, "data": _answer(row)})


@extend_schema(methods=["GET"], operation_id="routing_policy_get", summary="One routing policy",
               tags=["routing"], responses={200: PolicyAnswerSerializer, 404: ErrorSerializer, **AUTH_ERRORS})
@extend_schema(methods=["PUT"], operation_id="routing_policy_put", summary="Create or replace a routing policy",
               tags=["routing"], request=RoutingPolicySerializer,
               responses={200: PolicyAnswerSerializer, 400: ErrorSerializer, **AUTH_ERRORS})
@extend_schema(methods=["DELETE"], operation_id="routing_policy_delete", summary="Remove a routing policy",
               tags=["routing"], responses={200: DeletedSerializer, 404: ErrorSerializer, **AUTH_ERRORS})
@api_view(["GET", "PUT", "DELETE"])
@permission_classes([IsAdmin])
def policy_view(request, name: str):
    row = RoutingPolicy.objects.filter(name=name).first()
    if request.method == "PUT":
        try:
            data = _body(request, name)
        except spec.Invalid as err:
            return _error(str(err))
        try:
            with transaction.atomic():
                row = _save(data, RoutingPolicy.objects.select_for_update().filter(name=name).first())
        except IntegrityError:  # another PUT created it first: replace that one
            row = _save(data, RoutingPolicy.objects.get(name=name))
        return Response({"success": True, "data": _answer(row)})
    if row is None:
        return _error(f"No routing policy named '{name[:100]}'.", 404)
    if request.method == "DELETE":
        row.delete()
        spec.reload()
        return Response({"success": True})
    return Response({"success": True, "data": _answer(row)})
