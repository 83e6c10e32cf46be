"""The management API's OpenAPI schema: its auth schemes, the shared error bodies, and the plain Django routes.

drf-spectacular describes the DRF views from their ``extend_schema`` annotations; this module names the
auth classes as OpenAPI security schemes and adds /metrics, a plain Django view it cannot see.
"""
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer
from rest_framework import serializers


class KeyScheme(OpenApiAuthenticationExtension):
    target_class = "proxy.auth.ManagementAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "The master key or an admin virtual key: `Authorization: Bearer sk-sf-…`."}


class JwtScheme(OpenApiAuthenticationExtension):
    target_class = "sso.tokens.SmartflowJWTAuthentication"
    name = "smartflowJwt"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "The Smartflow JWT that `GET /api/auth/sso/callback` returns."}


class ErrorSerializer(serializers.Serializer):
    success = serializers.BooleanField(help_text="Always false.")
    error = serializers.CharField(help_text="What went wrong and what to do.")


class DetailSerializer(serializers.Serializer):
    """DRF's own refusals: no or a bad credential (401), not allowed (403), a body that is not JSON (400)."""

    detail = serializers.CharField()


class DeletedSerializer(serializers.Serializer):
    success = serializers.BooleanField()


def envelope(name: str, data: type[serializers.Serializer], many: bool = False) -> type[serializers.Serializer]:
    """The management API's answer around a body, {"success": true, "data": …}, for the schema."""
    return type(name, (serializers.Serializer,), {"success": serializers.BooleanField(), "data": data(many=many)})


AUTH_ERRORS = {
    401: OpenApiResponse(DetailSerializer, "No credential, or an invalid or expired one."),
    403: OpenApiResponse(DetailSerializer, "Signed in, but not allowed (admin only, or not a management key)."),
}


def bad_request(serializer, name: str) -> OpenApiResponse:
    """A 400: the view's own error body, or DRF's when the body is not JSON at all."""
    either = PolymorphicProxySerializer(component_name=name, serializers=[serializer, DetailSerializer],
                                        resource_type_field_name=None)
    return OpenApiResponse(either, "The body is invalid; the answer names every problem.")


def add_plain_routes(result, generator, request, public):
    """Postprocessing hook: the plain Django routes that belong to the documented API."""
    from metrics.views import OPENAPI_PATHS

    result.setdefault("paths", {}).update(OPENAPI_PATHS)
    return result
