"""The VASLog: one record per proxied request, failed, refused or served."""
from django.db import models


class VASLog(models.Model):
    id = models.CharField(max_length=32, primary_key=True)
    timestamp = models.DateTimeField()
    key_prefix = models.CharField(max_length=16, blank=True)
    team = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=40, default="chat.completions")
    client_model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=20, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    status_code = models.PositiveSmallIntegerField()
    stream = models.BooleanField(default=False)
    latency_ms = models.FloatField(default=0)
    overhead_ms = models.FloatField(default=0)
    stages = models.JSONField(default=list)
    tokens_input = models.PositiveIntegerField(default=0)
    tokens_output = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    # The model had no price: cost_usd is stored 0 (so sorting and cursors stay simple) and shown null.
    unpriced = models.BooleanField(default=False)
    cache = models.CharField(max_length=8, default="bypass")
    # MetaCache: {"key", "age_s", "ttl_s", "saved_usd", "similarity"} on a hit, {"key"} on a miss.
    cache_meta = models.JSONField(default=dict, blank=True)
    compliance = models.CharField(max_length=10, default="pass")
    guardrails = models.JSONField(default=dict)
    routing = models.JSONField(default=dict)
    prompt = models.JSONField(default=list)
    response = models.JSONField(null=True)
    error = models.TextField(blank=True)

    class Meta:
        verbose_name = "VAS log"
        # What the list filters and sorts on (traces/queries.py); each ends in (timestamp, id)
        # or id so keyset pages seek instead of scanning.
        indexes = [
            models.Index(fields=["-timestamp", "-id"], name="vaslog_newest"),
            # A team member's list (traces/queries.py in_teams): one team is a seek, newest first.
            models.Index(fields=["team", "-timestamp", "-id"], name="vaslog_team_newest"),
            models.Index(fields=["provider", "-timestamp", "-id"], name="vaslog_provider_newest"),
            models.Index(fields=["cache", "-timestamp", "-id"], name="vaslog_cache_newest"),
            models.Index(fields=["compliance", "-timestamp", "-id"], name="vaslog_compliance_newest"),
            models.Index(fields=["provider", "cache", "-timestamp", "-id"], name="vaslog_provider_cache_newest"),
            models.Index(fields=["-latency_ms", "-id"], name="vaslog_slowest"),
        ]

    def __str__(self):
        return f"{self.id} {self.provider}/{self.upstream_model} {self.status_code}"


FIELDS = [f.name for f in VASLog._meta.fields]


def as_dict(log: VASLog) -> dict:
    """The contract's VASLog body."""
    return {
        "id": log.id, "timestamp": log.timestamp.isoformat(), "key": log.key_prefix,
        "team": log.team or None, "endpoint": log.endpoint, "client_model": log.client_model,
        "provider": log.provider, "upstream_model": log.upstream_model,
        "status_code": log.status_code, "stream": log.stream, "latency_ms": log.latency_ms,
        "overhead_ms": log.overhead_ms, "stages": log.stages, "tokens_input": log.tokens_input,
        "tokens_output": log.tokens_output, "cost_usd": None if log.unpriced else float(log.cost_usd),
        "unpriced": log.unpriced, "cache": log.cache, "cache_meta": log.cache_meta,
        "compliance": log.compliance, "guardrails": log.guardrails, "routing": log.routing,
        "prompt": log.prompt, "response": log.response, "error": log.error or None,
    }
