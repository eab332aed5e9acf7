"""The benchmark runs end to end in its tiny mode, prints its table, and leaves no server behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_quick_mode_prints_the_table_and_stops_its_server() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--no-optimize"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| measurement" in out
    for row in (
        "cold grid blocks.4: GET after upload",
        "warm layer switch to blocks.3",
        "blocks.4 grid vs matplotlib: warm",
        "filters conv_head PNG",
        "throughput, 8 clients, mixed",
        "/healthz p99 under load",
        "RSS after 40 mixed requests",
        "cold start: process start to /readyz 200",
    ):
        assert row in out, row
    assert re.search(r"errors \(non-2xx or failed\)\s*\|\s*0\s*\|", out), out
    # the server it started is gone
    pid = re.search(r"server pid (\d+) ready", done.stderr)
    assert pid is not None, done.stderr[-2000:]
    assert not Path(f"/proc/{pid.group(1)}").exists()
