"""Without a cluster configured, nothing imports Ray: the default process stays one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.services.cluster.localray import ray_env

PROBE = """
import json, sys
from convscope.config import Settings
from convscope.api.app import create_app
from convscope.cli import build_parser
app = create_app(Settings(data_dir=sys.argv[1], models_poll_seconds=0))
build_parser().parse_args(["serve", "--port", "8001"])
print(json.dumps({
    "ray": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")),
    "jobs": type(app.state.service.jobs).__name__,
}))
"""


def test_building_the_app_imports_no_ray(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        env=ray_env(),  # no CONVSCOPE_ variables: the defaults
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {"ray": [], "jobs": "JobManager"}
