"""Fixtures of the proxy tests: routing policies in the database, and a clean breaker and budget."""
import pytest


@pytest.fixture
def routing_policy(gateway):
    """make(name, strategy, targets, **fields) stores a policy (validated as the API does) and makes
    it current at once; the breaker and retry budget start empty."""
    from proxy.models import RoutingPolicy
    from proxy.routing_policies import breaker, budget, spec

    def make(name, strategy, targets, **fields):
        data = spec.validate({"name": name, "strategy": strategy, "targets": targets, **fields})
        RoutingPolicy.objects.update_or_create(name=name, defaults={
            "strategy": data["strategy"], "targets": data["targets"], "retry": data["retry"],
            "failover_on": data["failover_on"], "models": data["models"], "teams": data["teams"],
            "sticky": data["sticky"] or "", "enabled": data["enabled"], "priority": data["priority"]})
        refresh()
        return data

    def refresh():
        spec.snapshot.invalidate()
        spec.snapshot.get_sync()

    breaker.current().reset()
    budget.budget.reset()
    make.refresh = refresh
    yield make
    RoutingPolicy.objects.all().delete()
    refresh()
    breaker.current().reset()
    budget.budget.reset()
