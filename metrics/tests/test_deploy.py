"""deploy/: the Prometheus scrape config and the Grafana dashboard refer to real metrics."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from metrics import registry

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KNOWN = {m.name for m in (*registry.COUNTERS, registry.LATENCY_P50, registry.LATENCY_P90, registry.LATENCY_P99,
                          registry.CACHE_HIT_RATE, registry.CACHE_SIZE, registry.ROLLUP_AGE)}
KNOWN |= {f"{registry.OVERHEAD.name}_{suffix}" for suffix in ("bucket", "sum", "count")}


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian's prometheus package) not installed")
def test_promtool_accepts_the_scrape_config_and_rules():
    result = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_grafana_dashboard_uses_only_metrics_we_export():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    used = {name for e in exprs for name in re.findall(r"smartflow_[a-z0-9_]+", e)}
    assert used and used <= KNOWN, used - KNOWN
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("latency p99", "cache hit rate", "spend", "tokens"):
        assert topic in titles, topic
