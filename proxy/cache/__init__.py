"""MetaCache: the response cache (exact and semantic); each backend is imported only when used."""
