"""Routing policies: failover, weighted A/B splits and cheapest-first (CONTRACT "Routing policies").

spec.py validates and selects policies and orders their targets, breaker.py is the circuit
breaker shared through Redis, budget.py the retry budget, api.py the management routes; the
attempt loop itself is proxy/attempts.py.
"""
