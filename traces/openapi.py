"""The VAS log API's bodies and query parameters, for the OpenAPI schema (traces/queries.py validates)."""
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from proxy.routing import PROVIDER_NAMES

from .queries import CACHE_VALUES, COMPLIANCE_VALUES, MAX_LIMIT, MAX_OFFSET, SORTS


class SummarySerializer(serializers.Serializer):
    id = serializers.CharField()
    timestamp = serializers.DateTimeField()
    key = serializers.CharField(allow_blank=True, help_text="The key's prefix only.")
    team = serializers.CharField(allow_null=True)
    endpoint = serializers.CharField(allow_blank=True)
    client_model = serializers.CharField(allow_blank=True)
    provider = serializers.CharField(allow_blank=True)
    upstream_model = serializers.CharField(allow_blank=True)
    status_code = serializers.IntegerField()
    stream = serializers.BooleanField()
    latency_ms = serializers.FloatField()
    overhead_ms = serializers.FloatField()
    tokens_input = serializers.IntegerField()
    tokens_output = serializers.IntegerField()
    cost_usd = serializers.FloatField(allow_null=True, help_text="null: the model has no price (unpriced).")
    unpriced = serializers.BooleanField()
    cache = serializers.ChoiceField(CACHE_VALUES)
    compliance = serializers.ChoiceField(COMPLIANCE_VALUES)
    error = serializers.CharField(allow_null=True)


class StageSerializer(serializers.Serializer):
    name = serializers.CharField()
    ms = serializers.FloatField()


class VASLogSerializer(SummarySerializer):
    stages = StageSerializer(many=True)
    cache_meta = serializers.JSONField(help_text='MetaCache: {"key", "age_s", "ttl_s", "saved_usd", '
                                                 '"similarity" (semantic hits)}; {"key"} on a miss; {} bypassed.')
    guardrails = serializers.JSONField(help_text='{"policies": [...], "pii": [...], "risk_score": 0..1}')
    routing = serializers.JSONField(help_text='{"override", "policy", "strategy", "arm", "chain", ...}')
    prompt = serializers.JSONField(help_text="The messages.")
    response = serializers.JSONField(help_text="The answer.")


class LogListSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    data = SummarySerializer(many=True)
    total = serializers.IntegerField()
    total_exact = serializers.BooleanField(help_text="False when the total is an estimate (a large table).")
    next_cursor = serializers.CharField(allow_null=True, help_text="Pass as 'cursor' for the next page.")
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class LogDetailSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    data = VASLogSerializer()


LIST_PARAMETERS = [
    OpenApiParameter("limit", int, description=f"Rows per page, 1 to {MAX_LIMIT} (default 50)."),
    OpenApiParameter("offset", int, description=f"Rows to skip, 0 to {MAX_OFFSET}; deeper, page with 'cursor'."),
    OpenApiParameter("q", str, description="Search: a request id (or its prefix), a model name or prompt text."),
    OpenApiParameter("provider", str, enum=PROVIDER_NAMES),
    OpenApiParameter("cache", str, enum=CACHE_VALUES),
    OpenApiParameter("compliance", str, enum=COMPLIANCE_VALUES),
    OpenApiParameter("policy", str, description="Only requests governed by this routing policy."),
    OpenApiParameter("arm", str, description="Only requests served first by this weighted arm ('provider/model')."),
    OpenApiParameter("sort", str, enum=[*SORTS, *(f"-{k}" for k in SORTS)],
                     description="A field; '-field' for descending (default -timestamp)."),
    OpenApiParameter("cursor", str, description="The 'next_cursor' of the previous page."),
]
