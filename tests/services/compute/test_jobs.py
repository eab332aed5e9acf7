"""The job manager: progress, cancel, cache, queue bound, failures, shared results folder."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from convscope.errors import InvalidParameterError, JobNotFinishedError, OverloadedError
from convscope.render.overlay import images_png
from convscope.services.compute.jobs import JobContext, JobManager, JobStatus, cache_key
from convscope.services.optvis.objectives import Objective
from convscope.services.optvis.optimize import OptimizeSettings, optimize_images


@pytest.fixture
def jobs() -> Iterator[JobManager]:
    manager = JobManager(max_running=1, max_queued=1, preview_encoder=images_png)
    yield manager
    manager.shutdown(timeout=10)


def wait_until(
    manager: JobManager, job_id: str, states: set[str], timeout: float = 60
) -> JobStatus:
    deadline = time.monotonic() + timeout
    status = manager.status(job_id)
    while status.state not in states:
        assert time.monotonic() < deadline, f"job stuck in {status.state}"
        status = manager.wait_for_update(job_id, status.version, 1.0)
    return status


def blocking_work(gate: threading.Event, steps: int = 100):  # type: ignore[no-untyped-def]
    """Work that reports a step, then waits for ``gate`` between steps."""

    def work(ctx: JobContext) -> bytes:
        for step in range(1, steps + 1):
            ctx.progress(step, steps, torch.zeros(1, 3, 4, 4) if step == 1 else None)
            gate.wait(5)
        return b"done"

    return work


def test_optimisation_job_reports_progress_and_caches_its_result(jobs, model) -> None:  # type: ignore[no-untyped-def]
    pre = model.spec.preprocessing
    settings = OptimizeSettings(steps=6, size=48, preview_every=3)
    objectives = [Objective.channel("blocks.2", 1)]
    key = cache_key(
        model="efficientnet_lite0",
        weights="abc",
        settings=settings.__dict__,
        objectives=[o.describe() for o in objectives],
    )

    def work(ctx: JobContext) -> bytes:
        images = optimize_images(
            model.module,
            objectives,
            pre.mean,
            pre.std,
            settings,
            progress=ctx.progress,
            cancel=ctx.cancel_event,
        )
        return images_png(images)

    first = jobs.submit(key, work, total=settings.steps, label="blocks.2:1")
    steps_seen = []
    status = first
    while status.state not in ("done", "failed"):
        status = jobs.wait_for_update(first.id, status.version, 30)
        steps_seen.append(status.step)
    assert status.state == "done", status.error
    assert steps_seen == sorted(steps_seen) and len(set(steps_seen)) > 2
    png = jobs.result_png(first.id)
    assert png.startswith(b"\x89PNG")
    assert jobs.preview_png(first.id).startswith(b"\x89PNG")

    # Done the moment submit returns: nothing ran again (the bound leaves room for a slow CI box).
    start = time.perf_counter()
    again = jobs.submit(key, work, total=settings.steps)
    assert time.perf_counter() - start < 0.5
    assert again.id == first.id and again.state == "done"
    assert jobs.result_png(again.id) == png


def test_cancel_a_running_job_frees_the_worker(jobs) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    running = jobs.submit("slow", blocking_work(gate))
    wait_until(jobs, running.id, {"running"})
    waiting = jobs.submit("next", lambda ctx: b"next")
    assert jobs.status(waiting.id).queue_position == 0
    jobs.cancel(running.id)
    gate.set()
    assert wait_until(jobs, running.id, {"cancelled", "done", "failed"}).state == "cancelled"
    assert wait_until(jobs, waiting.id, {"done", "failed"}).state == "done"
    assert jobs.result_png(waiting.id) == b"next"
    with pytest.raises(JobNotFinishedError) as caught:
        jobs.result_png(running.id)
    assert caught.value.code == "job_not_finished"
    # A cancelled key is not cached: asking again starts a new job.
    assert jobs.submit("slow", lambda ctx: b"x").id != running.id


def test_cancel_a_queued_job_and_the_queue_bound(jobs) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()
    running = jobs.submit("a", blocking_work(gate))
    wait_until(jobs, running.id, {"running"})
    queued = jobs.submit("b", lambda ctx: b"b")
    with pytest.raises(OverloadedError) as caught:
        jobs.submit("c", lambda ctx: b"c")
    assert caught.value.code == "overloaded" and "1 jobs are queued" in caught.value.detail
    assert jobs.counts() == {"running": 1, "queued": 1}
    assert jobs.cancel(queued.id).state == "cancelled"
    third = jobs.submit("c", lambda ctx: b"c")  # room again
    assert third.queue_position == 0
    gate.set()
    assert wait_until(jobs, third.id, {"done"}).state == "done"


def test_failed_job_records_its_error(jobs) -> None:  # type: ignore[no-untyped-def]
    def bad_request(ctx: JobContext) -> bytes:
        raise InvalidParameterError("channel", "expected 0 <= channel < 40, got 99")

    def bug(ctx: JobContext) -> bytes:
        raise ZeroDivisionError("oops")

    a = jobs.submit("bad", bad_request)
    status = wait_until(jobs, a.id, {"done", "failed", "cancelled"})
    assert status.state == "failed"
    assert status.error == {
        "code": "invalid_parameter",
        "detail": "channel: expected 0 <= channel < 40, got 99",
    }
    b = jobs.submit("bug", bug)
    status = wait_until(jobs, b.id, {"done", "failed", "cancelled"})
    assert status.error == {"code": "internal_error", "detail": "ZeroDivisionError: oops"}
    assert jobs.submit("ok", lambda ctx: b"ok")  # the worker survived


def test_results_folder_is_shared_between_managers(tmp_path: Path) -> None:
    one = JobManager(max_running=1, max_queued=4, results_dir=tmp_path)
    two = JobManager(max_running=1, max_queued=4, results_dir=tmp_path)
    try:
        key = cache_key(model="m", layer="l", seed=1)
        assert key == cache_key(seed=1, layer="l", model="m")
        done = wait_until(one, one.submit(key, lambda ctx: b"\x89PNG-bytes").id, {"done"})
        assert (tmp_path / f"{key}.png").read_bytes() == b"\x89PNG-bytes"
        assert done.cached is False
        served = two.submit(key, lambda ctx: pytest.fail("should come from the folder"))
        assert served.state == "done" and served.cached
        assert two.result_png(served.id) == b"\x89PNG-bytes"
    finally:
        one.shutdown()
        two.shutdown()
