"""MetaCache: the response cache behind proxy/policies/cache.py (keys, stores, replay, the semantic index)."""
