"""Job control tokens and change notifications of the job manager."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from convscope.errors import JobTokenError
from convscope.services.compute.jobs import MAX_LABEL_CHARS, JobContext, JobManager


@pytest.fixture
def jobs() -> Iterator[JobManager]:
    manager = JobManager(max_running=1, max_queued=4)
    yield manager
    manager.shutdown(timeout=10)


def held_work(gate: threading.Event):  # type: ignore[no-untyped-def]
    def work(ctx: JobContext) -> bytes:
        while not gate.wait(0.01):
            ctx.progress(1, 10)
        return b"png"

    return work


def test_each_submitter_gets_a_token_and_cancel_needs_one(jobs: JobManager) -> None:
    gate = threading.Event()
    first = jobs.submit("k", held_work(gate), total=10, label="x" * 10_000)
    second = jobs.submit("k", held_work(gate), total=10)  # same work: the same job
    assert first.id == second.id and first.token and second.token
    assert first.token != second.token
    assert jobs.status(first.id).token is None  # a status never carries a token
    assert len(first.label) == MAX_LABEL_CHARS
    for wrong in ("", "nope", f"{first.token}x"):
        with pytest.raises(JobTokenError):
            jobs.cancel(first.id, wrong)
    # The first submitter withdraws: the second still wants the job, so it goes on.
    after = jobs.cancel(first.id, first.token)
    assert after.state in ("queued", "running")
    with pytest.raises(JobTokenError):
        jobs.cancel(first.id, first.token)  # used up
    cancelled = jobs.cancel(first.id, second.token)
    assert cancelled.state in ("cancelled", "running")
    final = jobs.wait_for_update(first.id, cancelled.version, 10)
    while final.state != "cancelled":
        final = jobs.wait_for_update(first.id, final.version, 10)
    gate.set()


def test_several_tokens_of_one_client_cancel_at_once(jobs: JobManager) -> None:
    gate = threading.Event()
    submitted = [jobs.submit("k2", held_work(gate), total=10) for _ in range(3)]
    tokens = [s.token for s in submitted]
    job = jobs.status(submitted[0].id)
    assert {s.id for s in submitted} == {job.id}
    stopped = jobs.cancel(job.id, ",".join(t for t in tokens if t))
    assert stopped.state in ("cancelled", "running")
    gate.set()


def test_subscribers_are_called_on_every_change_until_they_leave(jobs: JobManager) -> None:
    gate = threading.Event()
    job = jobs.submit("k3", held_work(gate), total=10)
    seen = threading.Event()
    calls: list[int] = []

    def callback() -> None:
        calls.append(1)
        seen.set()

    stop = jobs.subscribe(job.id, callback)
    assert seen.wait(10)  # progress from the worker thread
    stop()
    gate.set()
    jobs.wait_for_update(job.id, jobs.status(job.id).version, 10)
    count = len(calls)
    jobs.cancel(job.id)
    assert len(calls) == count  # unsubscribed: no more calls
