"""The compose `cluster` profile and the KubeRay RayService sample: parsed and checked against
the CLI they run, the Ray pin and the security defaults (docs/operations.md)."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from convscope.cli import build_parser

REPO = Path(__file__).resolve().parents[3]


def _ray_pin() -> str:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (pin,) = extras["cluster"]
    return re.fullmatch(r"ray\[serve,data\]==([\d.]+)", pin).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def rayservice() -> list[dict]:
    return list(yaml.safe_load_all((REPO / "deploy/rayservice.yaml").read_text()))


def _flat(command: list[str] | str) -> str:
    return " ".join(command) if isinstance(command, list) else command


def test_compose_cluster_profile(compose) -> None:
    services = compose["services"]
    cluster = {n: s for n, s in services.items() if "cluster" in s.get("profiles", [])}
    assert set(cluster) == {"ray-head", "ray-worker", "api-serve"}
    for name in ("api", "web"):  # the default `docker compose up` is unchanged
        assert "profiles" not in services[name]
    head, worker, api = cluster["ray-head"], cluster["ray-worker"], cluster["api-serve"]
    assert head["build"]["args"]["EXTRAS"] == "[cluster]"
    assert head["image"] == worker["image"] == api["image"]
    head_cmd, worker_cmd = _flat(head["command"]), _flat(worker["command"])
    for flag in ("--include-dashboard=false", "--disable-usage-stats", "--object-store-memory="):
        assert flag in head_cmd
    assert "--port=6379" in head_cmd and "--address=ray-head:6379" in worker_cmd
    for cmd in (head_cmd, worker_cmd):
        assert "--node-ip-address=$$(hostname -i)" in cmd  # the compose network, not 0.0.0.0
        assert 'test -n "$$RAY_AUTH_TOKEN"' in cmd  # no token: no node
    for service in cluster.values():
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in env
        assert env["CONVSCOPE_DATA_DIR"] == "/data"
        assert "convscope-data:/data" in service["volumes"]  # one shared store on every node
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    # The API service runs `convscope serve --cluster` with arguments the CLI accepts.
    args = build_parser().parse_args(api["command"][1:])
    assert args.cluster == "ray-head:6379" and args.replicas == 2 and args.port == 8000
    assert head["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]  # Serve's proxy


def test_dockerfile_takes_the_extras(compose) -> None:
    text = (REPO / "Dockerfile").read_text()
    assert 'ARG EXTRAS=""' in text and "pip install .${EXTRAS}" in text


def test_rayservice_sample(rayservice) -> None:
    service, claim = rayservice
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == _ray_pin()
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    (deployment,) = app["deployments"]
    # The name serving.py deploys under (read, not imported: no Ray in this process).
    serving = (REPO / "backend/convscope/services/cluster/serving.py").read_text()
    (APP_NAME,) = re.findall(r'^APP_NAME = "(\w+)"$', serving, re.M)
    assert app["name"] == deployment["name"] == APP_NAME and app["route_prefix"] == "/"
    auto = deployment["autoscaling_config"]
    assert 1 <= auto["min_replicas"] <= auto["max_replicas"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert group["rayStartParams"]["disable-usage-stats"] == "true"
        assert int(group["rayStartParams"]["object-store-memory"]) > 0
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
        assert env["CONVSCOPE_DATA_DIR"]["value"] == "/data"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        claim_name = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
        assert claim_name == claim["metadata"]["name"]
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node, the same store
