"""A second node joining mid-run takes work: on a 1-CPU head, a second 1-CPU job waits for
resources; when a node joins, it starts there (its worker is one of that node's processes)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import DEFAULT
from tests.server.servers import Server, start_all
from tests.services.cluster.conftest import ray_environ, start_cluster
from tests.services.cluster.localray import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

M = f"/api/models/{DEFAULT}"
LONG = {"objectives": ["conv_head:7"], "steps": 1000, "size": 64}


def _workers(pids: set[int]) -> list[psutil.Process]:
    """Ray worker processes (they run tasks), not the node's daemons and agents."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            title = " ".join(proc.cmdline())
            if "default_worker" in title or (title.startswith("ray::") and "Agent" not in title):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_second_node_joining_mid_run_takes_the_waiting_job(tmp_path: Path) -> None:
    cluster = start_cluster(cpus=1)
    try:
        with ray_environ():
            server = Server(
                tmp_path / "data",
                tmp_path / "api.log",
                ray_address=cluster.address,
                torch_threads=1,
                max_running_jobs=2,
                models_poll_seconds=0,
            )
        cluster.extra.append(server.proc.pid)
        try:
            start_all([server])
            cluster.check_loopback()
            with httpx.Client(base_url=server.url, timeout=60) as api:
                submitted = [api.post(f"{M}/optimize", json={**LONG, "seed": s}) for s in (1, 2)]
                tokens = {r.json()["id"]: r.json()["token"] for r in submitted}
                first, second = (r.json()["id"] for r in submitted)

                def step(job: str) -> int:
                    return int(api.get(f"/api/jobs/{job}").json()["step"])

                wait_for(lambda: step(first) >= 1, 120, "the first job to run")
                head_only = cluster.pids()
                time.sleep(3)
                assert step(second) == 0  # no CPU left on the head: the task waits
                groups_before = len(cluster.groups)
                cluster.add_node(cpus=1)  # checks every listener again
                joined = cluster.groups[groups_before]
                wait_for(lambda: step(second) >= 1, 120, "the second job on the new node")
                new = cluster.pids() - head_only
                workers = [w for w in _workers(new) if _in_group(w, joined)]
                titles = [" ".join(psutil.Process(p).cmdline())[:50] for p in new]
                assert workers, titles  # the joined node started a worker for the job
                assert step(first) >= 1 and api.get(f"/api/jobs/{first}").json()["state"] == (
                    "running"
                )
                for job in (first, second):
                    stop = api.delete(f"/api/jobs/{job}", headers={"X-Job-Token": tokens[job]})
                    assert stop.status_code == 200
                wait_for(
                    lambda: all(
                        api.get(f"/api/jobs/{j}").json()["state"] == "cancelled"
                        for j in (first, second)
                    ),
                    60,
                    "both jobs cancelled",
                )
        finally:
            server.stop()
    finally:
        cluster.stop()


def _in_group(proc: psutil.Process, group: int) -> bool:
    """``proc`` descends from the node started in process group ``group``."""
    import os

    try:
        chain = [proc, *proc.parents()]
        return any(os.getpgid(p.pid) == group for p in chain)
    except (psutil.Error, OSError):
        return False
