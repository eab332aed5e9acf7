"""The Kubernetes sample manifest parses and wires the probes and the shared volume."""

from __future__ import annotations

import yaml

from convscope.config import Settings
from tests.server.servers import REPO


def test_k8s_manifest() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "deploy" / "k8s.yaml").read_text())}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(docs)
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    api = pod["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > 30  # longer than uvicorn's drain
    env = {e["name"]: e.get("value") for e in api["env"]}
    known = {f"CONVSCOPE_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith("CONVSCOPE_")} <= known
    mount = next(m for m in api["volumeMounts"] if m["name"] == "data")
    assert env["CONVSCOPE_DATA_DIR"] == mount["mountPath"]
    assert docs["Service"]["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_operations_doc_lists_every_setting() -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    missing = [n for n in Settings.model_fields if f"CONVSCOPE_{n.upper()}" not in doc]
    assert not missing, f"docs/operations.md does not document {missing}"
