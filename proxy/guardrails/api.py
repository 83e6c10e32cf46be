"""GET/POST /api/guardrails and GET/PUT/DELETE /api/guardrails/{name} (admin only: a policy says
what each team's traffic is checked for, which is the operator's business)."""
from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import ParseError
from rest_framework.response import Response

from smartflow.openapi import AUTH_ERRORS, DeletedSerializer, ErrorSerializer, envelope
from sso.api import IsAdmin

from .rules import ACTIONS, KINDS, SIDES, Invalid, validate
from .scan import PII_ENTITIES


class GuardrailSerializer(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.ChoiceField(KINDS)
    entities = serializers.ListField(child=serializers.ChoiceField(PII_ENTITIES), required=False,
                                     help_text="pii: entities; empty: all of them.")
    pattern = serializers.CharField(required=False, help_text="regex: an RE2 (linear-time) pattern.")
    words = serializers.ListField(child=serializers.CharField(), required=False, help_text="keywords")
    action = serializers.ChoiceField(ACTIONS)
    on = serializers.ChoiceField(SIDES)
    teams = serializers.ListField(child=serializers.CharField(), required=False, help_text="Team names; empty: all.")
    enabled = serializers.BooleanField()


PolicyAnswer = envelope("GuardrailAnswer", GuardrailSerializer)
PolicyList = envelope("GuardrailList", GuardrailSerializer, many=True)


def _bad(message: str, status: int = 400) -> Response:
    return Response({"success": False, "error": message}, status=status)


def _changed():
    from proxy.policies.guardrails import policies

    policies.invalidate()  # this process at once; the others within SMARTFLOW_CONFIG_TTL
    policies.get_sync()


def _save(request, name: str | None = None) -> Response:
    from proxy.models import GuardrailPolicy

    try:
        body = request.data
    except ParseError as exc:
        return _bad(f"body: not valid JSON ({exc.detail}).")
    if isinstance(body, dict) and name is not None:
        body = {**body, "name": body.get("name", name)}
    try:
        policy = validate(body)
    except Invalid as exc:
        return _bad(str(exc))
    try:
        with transaction.atomic():
            if name is None:
                row = GuardrailPolicy.objects.create(**policy)
            else:
                row = GuardrailPolicy.objects.select_for_update().filter(name=name).first()
                if row is None:
                    return _bad(f"No guardrail policy named '{name}'.", 404)
                for field, value in policy.items():
                    setattr(row, field, value)
                row.save()
    except IntegrityError:
        return _bad(f"name: a guardrail policy named '{policy['name']}' exists already.", 409)
    _changed()
    return Response({"success": True, "data": row.as_policy()})


@extend_schema(methods=["GET"], operation_id="guardrails_list", summary="The guardrail policies", tags=["guardrails"],
               responses={200: PolicyList, **AUTH_ERRORS})
@extend_schema(methods=["POST"], operation_id="guardrails_create", summary="Add a guardrail policy",
               tags=["guardrails"], request=GuardrailSerializer,
               responses={200: PolicyAnswer, 400: ErrorSerializer, 409: ErrorSerializer, **AUTH_ERRORS})
@api_view(["GET", "POST"])
@permission_classes([IsAdmin])
def guardrails_view(request):
    from proxy.models import GuardrailPolicy

    if request.method == "POST":
        return _save(request)
    return Response({"success": True, "data": [p.as_policy() for p in GuardrailPolicy.objects.order_by("name")]})


@extend_schema(methods=["GET"], operation_id="guardrails_read", summary="One guardrail policy", tags=["guardrails"],
               responses={200: PolicyAnswer, 404: ErrorSerializer, **AUTH_ERRORS})
@extend_schema(methods=["PUT"], operation_id="guardrails_replace", summary="Replace a guardrail policy",
               tags=["guardrails"], request=GuardrailSerializer,
               responses={200: PolicyAnswer, 400: ErrorSerializer, 404: ErrorSerializer, 409: ErrorSerializer,
                          **AUTH_ERRORS})
@extend_schema(methods=["DELETE"], operation_id="guardrails_delete", summary="Delete a guardrail policy",
               tags=["guardrails"], responses={200: DeletedSerializer, 404: ErrorSerializer, **AUTH_ERRORS})
@api_view(["GET", "PUT", "DELETE"])
@permission_classes([IsAdmin])
def guardrail_view(request, name: str):
    from proxy.models import GuardrailPolicy

    if request.method == "PUT":
        return _save(request, name)
    row = GuardrailPolicy.objects.filter(name=name).first()
    if row is None:
        return _bad(f"No guardrail policy named '{name}'.", 404)
    if request.method == "DELETE":
        row.delete()
        _changed()
        return Response({"success": True})
    return Response({"success": True, "data": row.as_policy()})
