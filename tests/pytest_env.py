"""A pytest plugin loaded before pytest-django sets Django up (see pytest.ini).

Tests never touch the developer's data folder, and concurrent test runs
(several checkouts, CI) never share a SQLite file or cache keys.
"""
import os
import tempfile

os.environ.setdefault("SMARTFLOW_DATA_DIR", tempfile.mkdtemp(prefix="smartflow-test-"))
os.environ.setdefault("SMARTFLOW_CACHE_PREFIX", f"smartflow-test-{os.getpid()}")
os.environ.setdefault("SMARTFLOW_METRICS_PREFIX", f"smartflow-test-{os.getpid()}:metrics")
os.environ.setdefault("SMARTFLOW_CHANNELS_PREFIX", f"smartflow-test-{os.getpid()}:channels")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production")
# Tests repeat the same prompts and count upstream calls: the MetaCache is on only where a test
# turns it on (proxy/tests/test_cache*.py), so no test is answered from another's entry.
os.environ.setdefault("SMARTFLOW_CACHE", "off")
