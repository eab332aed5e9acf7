"""Dockerfile, docker-compose.yml and the nginx template agree with each other and with the
way the web tests run the service (same template, same `convscope serve` command)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "deploy/nginx.conf.template"
SERVE = ["convscope", "serve", "--host", "0.0.0.0", "--port", "8000"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def args_of(dockerfile: list[tuple[str, str]], instruction: str) -> list[str]:
    return [args for name, args in dockerfile if name == instruction]


def test_dockerfile_base_pins_and_order(dockerfile):
    assert args_of(dockerfile, "FROM") == ["python:3.11-slim"]
    runs = args_of(dockerfile, "RUN")
    torch = next(i for i, r in enumerate(runs) if "torch==2.14.1" in r)
    assert "torchvision==0.29.1" in runs[torch]
    copies = args_of(dockerfile, "COPY")
    # The dependency layer (pyproject only) comes before the source.
    assert copies[0].startswith("pyproject.toml")
    order = [args for name, args in dockerfile if name in ("COPY", "RUN")]
    deps = next(
        i
        for i, a in enumerate(order)
        if a.startswith("mkdir -p backend/convscope") and "pip install ." in a
    )
    source = next(i for i, a in enumerate(order) if a.startswith("backend"))
    assert order.index(copies[0]) < deps < source


def test_dockerfile_runs_as_non_root_with_healthcheck(dockerfile):
    users = args_of(dockerfile, "USER")
    assert users and users[-1] not in ("root", "0", "0:0")
    last_user = max(i for i, (name, _) in enumerate(dockerfile) if name == "USER")
    cmd = max(i for i, (name, _) in enumerate(dockerfile) if name == "CMD")
    assert last_user < cmd
    health = " ".join(args_of(dockerfile, "HEALTHCHECK"))
    assert "/healthz" in health and "urllib" in health
    env = " ".join(args_of(dockerfile, "ENV"))
    for pair in (
        "CONVSCOPE_DATA_DIR=/data",
        "CONVSCOPE_WEIGHTS_DIR=/weights",
        "CONVSCOPE_MODELS_DIR=/models",
        "TORCH_HOME=/torch",
    ):
        assert pair in env
    assert any(a.startswith("PREFETCH_WEIGHTS") for a in args_of(dockerfile, "ARG"))


def test_same_serve_command_everywhere(dockerfile, compose):
    import json

    assert json.loads(args_of(dockerfile, "CMD")[-1]) == SERVE
    command = compose["services"]["api"]["command"]
    assert (shlex.split(command) if isinstance(command, str) else command) == SERVE
    # The tests and the bench run exactly this, with a loopback host and a free port, through
    # the one server helper (bench/server.py), which the web tests' fixtures use.
    helper = (REPO / "bench/server.py").read_text()
    assert 'HOST = "127.0.0.1"' in helper
    assert 'SERVE = ["serve", "--host", HOST]' in helper
    assert '"convscope.cli", *SERVE, "--port", str(self.port)]' in helper
    assert "ServerProcess(" in (REPO / "tests/web/conftest.py").read_text()


def test_compose_web_mounts_the_tested_template(compose):
    web = compose["services"]["web"]
    assert web["image"] == "nginx:1.27-alpine"
    mounts = {v.split(":")[0].removeprefix("./"): v.split(":")[1] for v in web["volumes"]}
    assert mounts[TEMPLATE] == "/etc/nginx/templates/default.conf.template"
    assert mounts["frontend"] == web["environment"]["FRONTEND_ROOT"] == "/usr/share/nginx/html"
    assert web["environment"]["API_UPSTREAM"] == "api:8000"
    assert web["depends_on"]["api"]["condition"] == "service_healthy"
    placeholders = set(re.findall(r"\$\{(\w+)\}", (REPO / TEMPLATE).read_text()))
    assert placeholders == {"API_UPSTREAM", "LISTEN_PORT", "FRONTEND_ROOT"}
    assert placeholders <= set(web["environment"])


def test_compose_ports_healthchecks_volumes(compose):
    services = compose["services"]
    for name in ("api", "web"):
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        assert services[name]["healthcheck"]["test"]
    api_mounts = {v.split(":")[1] for v in services["api"]["volumes"]}
    assert {"/weights", "/models", "/data"} <= api_mounts
    assert services["api"]["build"]["context"] == "."


def test_dockerignore_keeps_context_small():
    lines = (REPO / ".dockerignore").read_text().split()
    assert "*" in lines and "!backend/" in lines and "!pyproject.toml" in lines


def test_rendered_nginx_config_passes_nginx_t(tmp_path, nginx_layout):
    conf = nginx_layout(
        tmp_path, api_upstream="127.0.0.1:9", listen_port=18080, frontend_root=REPO / "frontend"
    )
    server = (tmp_path / "conf.d" / "default.conf").read_text()
    assert "${" not in server and "server 127.0.0.1:9;" in server
    assert "$host" in server  # nginx's own variables survive rendering
    result = subprocess.run(
        ["nginx", "-e", "stderr", "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    for path in ("/api/", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert re.search(rf"location (= )?{re.escape(path)} ", server), path
    assert "client_max_body_size 25m;" in server
    assert re.search(r"gzip_types[^;]*application/json", server)
