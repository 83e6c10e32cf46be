"""The SSO API's bodies, for the OpenAPI schema only: the views validate with sso.config.parse, not these."""
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer
from rest_framework import serializers

from smartflow.openapi import ErrorSerializer

from .config import NAME_RE, TENANT_RE, TYPES


class DerivedSerializer(serializers.Serializer):
    """Entra without an issuer: the endpoints derived from the tenant id; otherwise the discovery URL."""

    issuer = serializers.URLField(required=False)
    jwks_uri = serializers.URLField(required=False)
    authorization_endpoint = serializers.URLField(required=False)
    token_endpoint = serializers.URLField(required=False)
    discovery_url = serializers.URLField(required=False)


class ProviderSerializer(serializers.Serializer):
    name = serializers.RegexField(NAME_RE.pattern, help_text="Lower-case; names OIDC_CLIENT_SECRET_<NAME>.")
    type = serializers.ChoiceField(TYPES)
    tenant_id = serializers.RegexField(TENANT_RE.pattern, required=False,
                                       help_text="Entra only (required there): the directory's GUID or domain.")
    issuer = serializers.URLField(required=False, help_text=(
        "Required for okta and oidc. For entra optional: sovereign clouds and External ID custom domains; "
        "endpoints then come from {issuer}/.well-known/openid-configuration."))
    client_id = serializers.CharField()
    jwks_uri = serializers.URLField(required=False)
    redirect_uri = serializers.URLField(required=False)
    groups_claim = serializers.CharField(required=False, default="groups")
    scopes = serializers.ListField(child=serializers.CharField(), required=False,
                                   help_text="Must include 'openid'.")
    client_secret_configured = serializers.BooleanField(read_only=True, help_text=(
        "Whether OIDC_CLIENT_SECRET_<NAME> or OIDC_CLIENT_SECRET is set; secrets never pass through this API."))
    derived = DerivedSerializer(read_only=True)


class TeamDefaultsSerializer(serializers.Serializer):
    budget_cap_usd = serializers.FloatField(min_value=0, allow_null=True, required=False)
    budget_period = serializers.ChoiceField(["monthly", "daily", "total"], required=False, default="monthly")
    tpm_limit = serializers.IntegerField(min_value=0, allow_null=True, required=False)
    rpm_limit = serializers.IntegerField(min_value=0, allow_null=True, required=False)
    allowed_models = serializers.ListField(child=serializers.CharField(), required=False,
                                           help_text="[] allows every model.")


class SsoConfigSerializer(serializers.Serializer):
    providers = serializers.ListField(child=ProviderSerializer(), required=False)
    team_defaults = TeamDefaultsSerializer(required=False)
    sync_on_every_signin = serializers.BooleanField(required=False, default=True)


class ConfigErrorSerializer(ErrorSerializer):
    errors = serializers.ListField(child=serializers.CharField(), help_text="Every problem, each naming its field.")


class SsoErrorSerializer(ErrorSerializer):
    code = serializers.CharField(help_text="A stable code, e.g. unknown_provider, invalid_state, wrong_issuer.")


class TestByNameSerializer(serializers.Serializer):
    provider = serializers.CharField(help_text="The name of a saved provider.")


TEST_REQUEST = PolymorphicProxySerializer(
    component_name="SsoTest", serializers=[TestByNameSerializer, ProviderSerializer],
    resource_type_field_name=None)


class StepSerializer(serializers.Serializer):
    name = serializers.CharField()
    ok = serializers.BooleanField()
    detail = serializers.CharField()


class TestResultSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    steps = StepSerializer(many=True)


class TestErrorSerializer(ErrorSerializer):
    steps = StepSerializer(many=True)
    code = serializers.CharField(required=False)


class LoginSerializer(serializers.Serializer):
    auth_url = serializers.URLField(help_text="Send the browser here (state, nonce and PKCE are kept server-side).")


class SignedInUserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField(allow_blank=True)
    name = serializers.CharField(allow_blank=True)
    provider = serializers.CharField()
    is_staff = serializers.BooleanField()


class CallbackSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="The Smartflow JWT (Authorization: Bearer on the management API).")
    user = SignedInUserSerializer()
    teams = serializers.ListField(child=serializers.CharField())


class TeamSerializer(serializers.Serializer):
    name = serializers.CharField()
    source = serializers.ChoiceField(["sso", "manual"])
    budget_cap_usd = serializers.FloatField(allow_null=True)
    budget_period = serializers.ChoiceField(["monthly", "daily", "total"])
    spent_usd = serializers.FloatField(help_text="Settled spend of the current budget period, live.")
    tpm_limit = serializers.IntegerField(allow_null=True)
    rpm_limit = serializers.IntegerField(allow_null=True)
    allowed_models = serializers.ListField(child=serializers.CharField())
    members = serializers.ListField(child=serializers.CharField())
    last_synced = serializers.DateTimeField(allow_null=True)


class TeamListSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    data = TeamSerializer(many=True)


LOGIN_PARAMETERS = [OpenApiParameter("provider", str, required=True, description="A configured provider's name.")]
CALLBACK_PARAMETERS = [OpenApiParameter(name, str, description=text) for name, text in (
    ("code", "The authorization code the IdP sent back."), ("state", "The state the sign-in started with."),
    ("error", "The IdP's error, when it refused the sign-in."), ("error_description", "The IdP's explanation."))]
