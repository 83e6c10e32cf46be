"""Keys, teams, provider keys and the tier table in the admin (the control plane)."""
from django import forms
from django.contrib import admin, messages

from . import keystore, limits, prices, routing
from .auth import forget_keys
from .models import GuardrailPolicy, ModelPrice, ProviderKey, RoutingPolicy, Team, TierEntry, VirtualKey
from .routing_policies import spec


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "source", "budget_cap_usd", "budget_period", "spent_usd", "tpm_limit", "rpm_limit",
                    "last_synced")
    search_fields = ("name",)
    filter_horizontal = ("members",)
    readonly_fields = ("spent_usd",)

    def changelist_view(self, request, extra_context=None):
        limits.sync_spend(list(Team.objects.all()))  # the list shows the live spend
        return super().changelist_view(request, extra_context)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        forget_keys()


@admin.register(VirtualKey)
class VirtualKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "team", "is_admin", "rpm_limit", "tpm_limit", "budget_cap_usd", "created",
                    "revoked_at")
    list_filter = ("team", "is_admin")
    readonly_fields = ("prefix", "key_hash", "created")
    fields = ("name", "team", "is_admin", "rpm_limit", "tpm_limit", "budget_cap_usd", "revoked_at", "prefix",
              "key_hash", "created")

    def save_model(self, request, obj, form, change):
        if not change:
            key, raw = VirtualKey.issue(obj.team, obj.name, obj.is_admin, rpm_limit=obj.rpm_limit,
                                        tpm_limit=obj.tpm_limit, budget_cap_usd=obj.budget_cap_usd)
            obj.pk = key.pk
            messages.warning(request, f"New key (shown once, copy it now): {raw}")
            return
        super().save_model(request, obj, form, change)
        forget_keys()


class ProviderKeyForm(forms.ModelForm):
    api_key = forms.CharField(widget=forms.PasswordInput(render_value=False),
                              help_text="Stored encrypted; never shown again.")

    class Meta:
        model = ProviderKey
        fields = ("provider",)

    def save(self, commit=True):
        self.instance.set_key(self.cleaned_data["api_key"])
        return super().save(commit)


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    form = ProviderKeyForm
    list_display = ("provider", "last4", "updated")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        keystore.provider_keys.invalidate()


@admin.register(TierEntry)
class TierEntryAdmin(admin.ModelAdmin):
    list_display = ("model", "provider", "tier", "is_default")
    list_filter = ("provider", "tier")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        routing.table.invalidate()


@admin.register(GuardrailPolicy)
class GuardrailPolicyAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "action", "on", "enabled", "updated")
    list_filter = ("kind", "action", "on", "enabled")
    search_fields = ("name",)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        from .policies.guardrails import policies

        policies.invalidate()  # this process at once; the others within SMARTFLOW_CONFIG_TTL
        policies.get_sync()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        from .policies.guardrails import policies

        policies.invalidate()
        policies.get_sync()


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("provider", "model", "input_usd_per_mtok", "output_usd_per_mtok", "cache_read_usd_per_mtok",
                    "cache_write_usd_per_mtok")
    list_filter = ("provider",)
    search_fields = ("model",)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        prices.table.invalidate()  # this process at once, the others within SMARTFLOW_CONFIG_TTL

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        prices.table.invalidate()


class RoutingPolicyForm(forms.ModelForm):
    class Meta:
        model = RoutingPolicy
        fields = ("name", "strategy", "targets", "retry", "failover_on", "models", "teams", "sticky", "enabled",
                  "priority")

    def clean(self):
        data = super().clean()
        body = {name: data.get(name) for name in self.Meta.fields}
        body["sticky"] = body["sticky"] or None
        body["retry"] = body["retry"] or {}
        body["failover_on"] = body["failover_on"] or list(spec.DEFAULT_FAILOVER_ON)
        body["models"], body["teams"] = body["models"] or [], body["teams"] or []
        try:
            normal = spec.validate(body)
        except spec.Invalid as err:
            raise forms.ValidationError(str(err)) from None
        data.update(normal, sticky=normal["sticky"] or "")
        return data


@admin.register(RoutingPolicy)
class RoutingPolicyAdmin(admin.ModelAdmin):
    form = RoutingPolicyForm
    list_display = ("name", "strategy", "enabled", "priority", "updated")
    list_filter = ("strategy", "enabled")
    search_fields = ("name",)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        spec.reload()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        spec.reload()
