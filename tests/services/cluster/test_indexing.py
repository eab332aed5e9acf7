"""Collection indexing on Ray Data against the one-process index: equal partials and
scores; a killed actor gives a retried run or a clean failure, never a partial index; a node
that joins mid-run takes batches. The Ray driver is a subprocess (``index_driver``)."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from convscope.services.collections import indexfiles
from convscope.services.collections.service import BATCH
from convscope.services.facade import Convscope
from tests.services.cluster.conftest import start_cluster
from tests.services.cluster.localray import REPO, LocalRay, ray_env, wait_for
from tests.services.collections.conftest import DEFAULT, LAYERS, new_collection, variants
from tests.services.collections.test_index import _assert_equal

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(200)]

K = 8


@pytest.fixture(scope="module")
def collection(service: Convscope) -> str:
    """24 photos indexed in this process: the reference."""
    cid = new_collection(service, variants(service, 24, seed=5), "ray-reference")
    service.index_now(DEFAULT, cid, LAYERS, K)
    return cid


@pytest.fixture
def reference(service: Convscope, collection: str) -> indexfiles.IndexReader:
    return service.collections.reader(service.model(DEFAULT), collection)


@pytest.fixture
def shapes(service: Convscope) -> dict[str, list[int]]:
    model = service.model(DEFAULT)
    return {name: list(model.layer(name).output_shape or ()) for name in LAYERS}


class Driver:
    """``index_driver`` as a subprocess connected to ``cluster``."""

    def __init__(self, cluster: LocalRay, out: Path, **args: Any) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        (out / "args.json").write_text(
            json.dumps({"address": cluster.address, "out": str(out), "model": DEFAULT, **args})
        )
        with (out / "driver.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.services.cluster.index_driver",
                    str(out / "args.json"),
                ],
                env=ray_env(),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        cluster.extra.append(self.proc.pid)  # stopped with the cluster, whatever happens
        try:
            wait_for(
                lambda: (out / "connected").exists() or self.proc.poll() is not None,
                120,
                "driver",
            )
            assert (out / "connected").exists(), (out / "driver.log").read_text()[-3000:]
            cluster.check_loopback()  # the driver's listeners too, before any work is sent
        except BaseException:
            self.__exit__()
            raise
        (out / "go").touch()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def progress(self) -> int:
        try:
            return int((self.out / "progress").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def result(self, timeout: float = 150) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        path = self.out / "result.pkl"
        assert path.exists(), (self.out / "driver.log").read_text()[-3000:]
        return pickle.loads(path.read_bytes())  # type: ignore[no-any-return]


@pytest.fixture
def cluster() -> Iterator[LocalRay]:
    ray_cluster = start_cluster(cpus=2)
    try:
        yield ray_cluster
    finally:
        ray_cluster.stop()


def _options(**kwargs: Any) -> dict[str, Any]:
    return {"batch_size": BATCH, "actors": 1, "max_actors": 1, "cpus": 0.5} | kwargs


def test_ray_data_index_equals_the_one_process_index(
    cluster: LocalRay, service: Convscope, reference, shapes, tmp_path: Path
) -> None:
    with Driver(
        cluster,
        tmp_path / "run",
        data_dir=str(service.settings.data_dir),
        ids=reference.images,
        shapes=shapes,
        k=K,
        options=_options(),
        base=str(tmp_path / "index"),
    ) as driver:
        outcome = driver.result()
    assert "result" in outcome, outcome.get("trace")
    _assert_equal(outcome["result"].partial, reference.partial())
    written = indexfiles.open_current(tmp_path / "index")
    assert written is not None
    _assert_equal(written.partial(), reference.partial())
    for layer in LAYERS:
        np.testing.assert_array_equal(written.scores(layer), reference.scores(layer))


def _index_actors(cluster: LocalRay) -> list[psutil.Process]:
    found = []
    for pid in cluster.pids():
        try:
            proc = psutil.Process(pid)
            title = " ".join(proc.cmdline())
            if "IndexActor" in title or "MapWorker" in title:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_killed_actor_is_retried_or_fails_cleanly(
    cluster: LocalRay, service: Convscope, reference, shapes, tmp_path: Path
) -> None:
    base = tmp_path / "index"
    with Driver(
        cluster,
        tmp_path / "run",
        data_dir=str(service.settings.data_dir),
        ids=reference.images,
        shapes=shapes,
        k=K,
        options=_options(batch_size=4),
        base=str(base),
        pause=1.0,
    ) as driver:
        wait_for(lambda: driver.progress() > 0, 120, "the first batch")
        (actor,) = wait_for(lambda: _index_actors(cluster), 30, "the index actor")
        actor.send_signal(signal.SIGKILL)  # mid-run: at most 1 of 6 batches merged so far
        outcome = driver.result()
    served = indexfiles.open_current(base)
    if "result" in outcome:  # retried: the whole index, equal to the one-process one
        assert served is not None
        _assert_equal(served.partial(), reference.partial())
    else:  # failed: nothing served, not a partial index
        assert outcome["error"]
        assert served is None


@pytest.fixture(scope="module")
def big(service: Convscope) -> indexfiles.IndexReader:
    """96 photos indexed in this process: a run on one actor lasts long enough to join."""
    cid = new_collection(service, variants(service, 192, seed=11), "ray-join-reference")
    service.index_now(DEFAULT, cid, LAYERS, K)
    return service.collections.reader(service.model(DEFAULT), cid)


def test_a_node_joining_mid_run_takes_batches(
    service: Convscope, big: indexfiles.IndexReader, shapes, tmp_path: Path
) -> None:
    """On a 1-CPU head the pool's first 1-CPU actor fills the cluster (no budget to grow); a
    node that joins mid-run gives the budget for a second actor, which only fits there, and
    it takes batches. The result equals the one-process index."""
    cluster = start_cluster(cpus=1)
    try:
        with Driver(
            cluster,
            tmp_path / "run",
            data_dir=str(service.settings.data_dir),
            ids=big.images,
            shapes=shapes,
            k=K,
            options=_options(batch_size=2, max_actors=2, cpus=1.0),
            base=str(tmp_path / "index"),
        ) as driver:
            joining = threading.Thread(target=cluster.add_node, kwargs={"cpus": 1})
            joining.start()  # while the first actor loads its model and starts
            joining.join(150)
            assert not joining.is_alive()
            assert driver.progress() < len(big.images), "the run ended before the node joined"
            outcome = driver.result()
        assert "result" in outcome, outcome.get("trace")
        index = outcome["result"]
        head = (tmp_path / "run" / "node").read_text()
        assert sum(index.batches_per_node.values()) == len(big.images) // 2
        assert set(index.batches_per_node) - {head}, index.batches_per_node
        assert len(index.batches_per_node) == 2
        _assert_equal(index.partial, big.partial())
        written = indexfiles.open_current(tmp_path / "index")
        assert written is not None
        for layer in LAYERS:
            np.testing.assert_array_equal(written.scores(layer), big.scores(layer))
    finally:
        cluster.stop()
