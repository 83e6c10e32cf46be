"""Teams, virtual keys, provider keys, tier-table overrides and model prices."""
import hashlib
import secrets

from django.conf import settings
from django.db import models

KEY_PREFIX = "sk-sf-"
PROVIDER_CHOICES = [(p, p) for p in ("openai", "anthropic", "gemini", "ollama")]
PERIODS = [("monthly", "monthly"), ("daily", "daily"), ("total", "total")]


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class Team(models.Model):
    SOURCES = [("manual", "manual"), ("sso", "sso")]

    name = models.CharField(max_length=200, unique=True)
    source = models.CharField(max_length=10, choices=SOURCES, default="manual")
    budget_cap_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    budget_period = models.CharField(max_length=10, choices=PERIODS, default="monthly")
    # A copy of the live spend of the current period (proxy/limits), written off the request path.
    spent_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    # Empty list: every model is allowed.
    allowed_models = models.JSONField(default=list, blank=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="teams")
    last_synced = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.name


class VirtualKey(models.Model):
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="keys")
    is_admin = models.BooleanField(default=False, help_text="May use the management API.")
    # The key's own limits, on top of its team's (the tighter applies); its budget runs over the
    # team's budget_period.
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    budget_cap_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "virtual key"

    def __str__(self):
        return f"{self.prefix}… ({self.team})"

    @classmethod
    def issue(cls, team: Team, name: str = "", is_admin: bool = False, **limits) -> tuple["VirtualKey", str]:
        """Create a key (limits: rpm_limit, tpm_limit, budget_cap_usd); the raw value is returned
        once and only its hash is kept."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(team=team, name=name, is_admin=is_admin,
                                 prefix=raw[:12], key_hash=hash_key(raw), **limits)
        return key, raw


class ProviderKey(models.Model):
    """A provider API key entered in the admin, encrypted at rest."""

    provider = models.CharField(max_length=20, choices=PROVIDER_CHOICES, unique=True)
    encrypted_key = models.TextField(editable=False)
    last4 = models.CharField(max_length=4, editable=False)
    updated = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.provider} …{self.last4}"

    def set_key(self, raw: str):
        from .keystore import encrypt

        self.encrypted_key = encrypt(raw)
        self.last4 = raw[-4:]


class TierEntry(models.Model):
    """An admin override or addition to the tier table shipped in proxy/tiers.json."""

    TIERS = [("flagship", "flagship"), ("balanced", "balanced"), ("fast", "fast")]

    model = models.CharField(max_length=200, unique=True,
                             help_text="Model name; also matches dated variants (name-2025-…).")
    provider = models.CharField(max_length=20, choices=PROVIDER_CHOICES)
    tier = models.CharField(max_length=20, choices=TIERS)
    is_default = models.BooleanField(default=False, help_text="The model this provider uses for the tier.")

    class Meta:
        verbose_name_plural = "tier entries"

    def __str__(self):
        return f"{self.model} ({self.provider}, {self.tier})"


class GuardrailPolicy(models.Model):
    """A guardrail (CONTRACT.md "Guardrails"): what it looks for, what it does, where and for whom.

    Validated by proxy.guardrails.rules.validate (the management API and the admin alike)."""

    KINDS = [(k, k) for k in ("pii", "injection", "regex", "keywords")]
    ACTIONS = [(a, a) for a in ("flag", "redact", "block")]
    SIDES = [(s, s) for s in ("prompt", "response", "both")]

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=KINDS)
    entities = models.JSONField(default=list, blank=True, help_text="pii: entity names; empty: all of them.")
    pattern = models.TextField(blank=True, help_text="regex: an RE2 (linear-time) regular expression.")
    words = models.JSONField(default=list, blank=True, help_text="keywords: words or phrases (case-insensitive).")
    action = models.CharField(max_length=10, choices=ACTIONS, default="flag")
    on = models.CharField(max_length=10, choices=SIDES, default="prompt")
    teams = models.JSONField(default=list, blank=True, help_text="Team names; empty: every team.")
    enabled = models.BooleanField(default=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "guardrail policy"
        verbose_name_plural = "guardrail policies"

    def __str__(self):
        return self.name

    def as_policy(self) -> dict:
        return {"name": self.name, "kind": self.kind, "entities": list(self.entities or []),
                "pattern": self.pattern or "", "words": list(self.words or []), "action": self.action,
                "on": self.on, "teams": list(self.teams or []), "enabled": self.enabled}

    def clean(self):
        from django.core.exceptions import ValidationError

        from .guardrails.rules import Invalid, validate

        try:
            cleaned = validate(self.as_policy())
        except Invalid as exc:
            raise ValidationError({exc.field if hasattr(self, exc.field) else "__all__": str(exc)}) from None
        for name, value in cleaned.items():
            setattr(self, name, value)


class ModelPrice(models.Model):
    """An admin override or addition to the price table shipped in proxy/prices.json."""

    provider = models.CharField(max_length=20, choices=PROVIDER_CHOICES)
    model = models.CharField(max_length=200, help_text="Model name; also matches dated variants (name-2025-…); "
                                                       "'*' prices every model of the provider.")
    input_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    output_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    cache_read_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True,
                                                  help_text="Empty: the input price.")
    cache_write_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True,
                                                   help_text="Empty: the input price.")

    class Meta:
        unique_together = [("provider", "model")]

    def __str__(self):
        return f"{self.provider}/{self.model}"


class RoutingPolicy(models.Model):
    """A routing policy (CONTRACT "Routing policies"); validated by proxy/routing_policies/spec.py."""

    STRATEGIES = [("failover", "failover"), ("weighted", "weighted"), ("cheapest", "cheapest")]

    name = models.CharField(max_length=100, unique=True)
    strategy = models.CharField(max_length=20, choices=STRATEGIES)
    targets = models.JSONField(help_text='[{"provider": "anthropic", "model": "claude-sonnet-4-6", "weight": 1}, …]')
    retry = models.JSONField(default=dict, blank=True, help_text='{"attempts": 1, "backoff_ms": 250}')
    failover_on = models.JSONField(default=list, blank=True,
                                   help_text='Statuses and "timeout", "connect"; empty: the default set.')
    teams = models.JSONField(default=list, blank=True, help_text="Team names; empty: all.")
    sticky = models.CharField(max_length=10, blank=True, default="", help_text='"user" or empty.')
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(default=100, help_text="Lowest first; ties by name.")
    updated = models.DateTimeField(auto_now=True)
    # Last: the field's name hides django.db.models in the rest of the class body.
    models = models.JSONField(default=list, blank=True, help_text="Client model names; empty: all.")

    class Meta:
        verbose_name_plural = "routing policies"
        ordering = ("priority", "name")

    def __str__(self):
        return f"{self.name} ({self.strategy})"
