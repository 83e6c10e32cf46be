"""The image and the compose file are fit for production: what goes in, who runs it, health, signals, ports.

Read as data (PyYAML for the compose file, Docker's own rules for .dockerignore and the Dockerfile's
exec form); `docker compose config` (or Debian's docker-compose, which `make test` installs) checks the file too.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LONG_RUNNING = ("gateway", "worker", "postgres", "redis")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment: the default."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def drain_seconds() -> int:
    """How long `manage.py serve` lets requests finish after SIGTERM."""
    source = (ROOT / "proxy/management/commands/serve.py").read_text()
    return int(re.search(r"timeout_graceful_shutdown=(\d+)", source).group(1))


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


def pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: ** spans directories, * and ? stay within one."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves path out: a pattern excludes what it matches and everything beneath; the last match wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def test_the_image_leaves_local_state_and_secrets_out():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".git/HEAD", ".venv/bin/python", "data/smartflow.sqlite3", "data/secret_key", "data/master_key",
                 "smartflow.sqlite3-wal", "data/test.sqlite3", "elsewhere/secret_key", ".env",
                 "proxy/__pycache__/views.cpython-311.pyc", "key.pem"):
        assert ignored(path, patterns), f"{path} would go into the image"
    for path in ("manage.py", "requirements.txt", "proxy/views.py", "templates/base.html", "smartflow/settings.py",
                 "proxy/tiers.json"):
        assert not ignored(path, patterns), f"{path} is needed in the image"


def test_the_image_runs_as_an_unprivileged_user_with_an_exec_form_command():
    steps = dockerfile()
    users = [args for op, args in steps if op == "USER"]
    assert users, "no USER: the server would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert [op for op, _ in steps].index("USER") < [op for op, _ in steps].index("CMD")
    command = json.loads(next(args for op, args in steps if op == "CMD"))  # exec form is a JSON array
    assert command[0] not in ("sh", "/bin/sh", "bash") and "manage.py" in command
    health = next(args for op, args in steps if op == "HEALTHCHECK")
    check = json.loads(health.split("CMD", 1)[1])
    assert check[0] == "python" and "urllib" in check[-1] and "/health" in check[-1]


def test_every_service_has_a_healthcheck_and_waits_for_what_it_needs():
    services = compose()["services"]
    probes = {"gateway": ("python", "urllib", "127.0.0.1:7777/health"), "postgres": ("pg_isready",),
              "redis": ("redis-cli", "ping")}
    for name, words in probes.items():
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: exec form, no shell"
        assert all(any(w in part for part in test) for w in words), (name, test)
    for name in ("gateway", "worker"):
        needs = services[name]["depends_on"]
        assert needs["postgres"]["condition"] == needs["redis"]["condition"] == "service_healthy", name
        assert needs["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_services_restart_and_drain_before_being_killed():
    services = compose()["services"]
    for name in LONG_RUNNING:
        assert services[name].get("restart") in ("always", "unless-stopped"), name
    for name in ("gateway", "worker"):
        assert seconds(services[name]["stop_grace_period"]) > drain_seconds(), name


def test_signals_reach_the_server():
    services = compose()["services"]
    for name in ("gateway", "worker", "migrate"):
        command = services[name]["command"]
        assert isinstance(command, list), f"{name}: a command string runs under a shell"
        assert command[0] not in ("sh", "/bin/sh", "bash"), f"{name}: a shell wrapper would swallow SIGTERM"
    assert services["gateway"]["command"][-1] == "serve"


def test_the_management_port_is_published_on_loopback_only_by_default():
    ports = [interpolate(p) for p in compose()["services"]["gateway"]["ports"]]
    management = [p for p in ports if p.endswith(":7778")]
    assert management == ["127.0.0.1:7778:7778"], ports
    assert any(p.endswith(":7777") for p in ports)
    for name, service in compose()["services"].items():
        if name != "gateway":
            assert not service.get("ports"), f"{name} publishes a port"


def test_the_tls_settings_reach_the_containers():
    env = compose()["services"]["gateway"]["environment"]
    for var in ("DJANGO_ALLOWED_HOSTS", "DJANGO_CSRF_TRUSTED_ORIGINS", "SMARTFLOW_SECURE_COOKIES",
                "SMARTFLOW_TRUST_FORWARDED_PROTO", "SMARTFLOW_HSTS_SECONDS"):
        assert var in env, var
    readme = (ROOT / "README.md").read_text()
    for var in env:
        assert f"`{var}`" in readme, f"{var} is not in the README's settings table"


def test_docker_compose_accepts_the_file():
    import yaml

    # The compose plugin where there is one, else Debian's docker-compose (installed by `make test`).
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        command = ["docker-compose"]
    else:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed (the YAML is checked above)")
    result = subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, env={"SMARTFLOW_MASTER_KEY": "sk-sf-x",
                                                                 "DJANGO_SECRET_KEY": "x", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    gateway = services["gateway"]
    assert any(str(p).startswith("127.0.0.1:7778:") or (isinstance(p, dict) and p.get("host_ip") == "127.0.0.1"
                                                        and str(p.get("published")) == "7778")
               for p in gateway["ports"]), gateway["ports"]
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert gateway["stop_grace_period"] in ("45s", 45, "45")


def test_the_gateway_healthcheck_command_tells_up_from_down(gateway):
    import sys

    from conftest import free_port

    test = compose()["services"]["gateway"]["healthcheck"]["test"]
    assert test[1] == "python"

    def probe(port: int) -> int:
        command = [sys.executable, *(part.replace("7777", str(port)) for part in test[2:])]
        return subprocess.run(command, capture_output=True, timeout=30).returncode

    assert probe(gateway.proxy_port) == 0
    assert probe(free_port()) != 0  # nothing listening
