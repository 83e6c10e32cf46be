"""Cross-app test support: the fake upstream providers and their tests."""
