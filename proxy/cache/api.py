"""GET /api/cache (what the MetaCache holds and how often it answers) and DELETE /api/cache."""
from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.response import Response

from metrics import registry as r
from metrics.store import counters, parse_field
from smartflow.openapi import AUTH_ERRORS, ErrorSerializer
from sso.api import IsAdmin

from . import store as stores


def hits_and_misses() -> tuple[int, int]:
    """From the request counters (the VASLogs' cache values), added up across processes."""
    hits = misses = 0.0
    for name, value in counters.totals().items():
        metric = parse_field(name)[0]
        if metric == r.CACHE_HITS.name:
            hits += value
        elif metric == r.CACHE_MISSES.name:
            misses += value
    return int(hits), int(misses)


def stats() -> dict:
    store = stores.current()
    held = store.stats()
    hits, misses = hits_and_misses()
    return {"backend": store.backend, "mode": settings.SMARTFLOW_CACHE, "entries": held["entries"],
            "bytes": held["bytes"], "hits": hits, "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0}


class CacheStatsSerializer(serializers.Serializer):
    backend = serializers.ChoiceField(["memory", "redis"])
    mode = serializers.ChoiceField(["exact", "semantic", "off"])
    entries = serializers.IntegerField()
    bytes = serializers.IntegerField(help_text="Bytes of the stored answers.")
    hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    hit_rate = serializers.FloatField(help_text="hits / (hits + misses); 0 before any.")


class CacheAnswerSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    data = CacheStatsSerializer()


class CacheClearedSerializer(serializers.Serializer):
    success = serializers.BooleanField()


class CacheAccess(IsAdmin):
    """Reading the stats: any management caller; emptying the cache: admins only."""

    def has_permission(self, request, view):
        if request.method == "GET":
            return bool(request.user and request.user.is_authenticated)
        return super().has_permission(request, view)


@extend_schema(methods=["GET"], operation_id="cache_stats", summary="What the MetaCache holds and its hit rate",
               tags=["cache"], responses={200: CacheAnswerSerializer, **AUTH_ERRORS})
@extend_schema(methods=["DELETE"], operation_id="cache_clear", summary="Empty the MetaCache (admin only)",
               tags=["cache"], responses={200: CacheClearedSerializer, 503: ErrorSerializer, **AUTH_ERRORS})
@api_view(["GET", "DELETE"])
@permission_classes([CacheAccess])
def cache_view(request):
    if request.method == "DELETE":
        try:
            stores.current().clear()
            if settings.SMARTFLOW_CACHE == "semantic":
                from .semantic import index

                index().clear()
        except Exception as exc:  # Redis down: nothing was emptied, and the caller must know
            return Response({"success": False, "error": f"The cache store did not answer ({type(exc).__name__}); "
                                                        "try again."}, status=503)
        return Response({"success": True})
    return Response({"success": True, "data": stats()})
