"""The cluster's job table: one named, detached, asynchronous Ray actor.

Every API process connected to the cluster talks to the same :class:`JobTable`, so any of
them answers status, events, preview, result and cancel for any job, and a cache key is
de-duplicated across processes. The table keeps the queue bound (``max_running`` jobs run,
``max_queued`` wait) and starts each job as a Ray task (:func:`worker.run_job`) with the
job's declared CPUs and GPUs; a task whose worker dies is retried by Ray (``max_retries``)
and, when the retries are spent, the job fails cleanly. Results never live here: the task
writes ``<key>.png`` into the shared results folder before the job shows as done.

Methods return plain dicts (``JobStatus`` fields) or ``None`` for an unknown id; the client
(:class:`jobs.RayJobManager`) turns those into the same objects and errors as in one process.
Control tokens work as in one process: every submitter of a key gets its own token (the
last ``MAX_OWNERS`` are kept), and cancel needs one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import uuid
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import ray

from convscope.services.cluster.worker import run_job
from convscope.services.collections.service import INDEX_JOB
from convscope.services.compute.jobs import FINISHED, MAX_OWNERS, JobSpec

log = logging.getLogger(__name__)

TABLE_NAME = "convscope-jobs"


class JobTable:
    """Job records, the queue and the Ray tasks that run them (used as an async actor)."""

    def __init__(
        self,
        max_running: int,
        max_queued: int,
        *,
        results_dir: str,
        keep_finished: int = 256,
        job_cpus: float = 1.0,
        job_gpus: float = 0.0,
        max_retries: int = 2,
    ) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self.results_dir = Path(results_dir)
        self.job_cpus = job_cpus
        self.job_gpus = job_gpus
        self.max_retries = max_retries
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._by_key: dict[str, str] = {}
        self._queue: deque[str] = deque()
        self._running: set[str] = set()
        self._work: dict[str, tuple[JobSpec, Any]] = {}  # id -> (spec, settings) until started
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._run = ray.remote(run_job)

    # -- records --------------------------------------------------------------------------

    def _snapshot(self, job: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in job.items() if not k.startswith("_")}
        out["queue_position"] = self._queue.index(job["id"]) if job["state"] == "queued" else None
        out["has_preview"] = job["_preview"] is not None
        return out

    def _owned(self, job: dict[str, Any]) -> dict[str, Any]:
        """A snapshot with a new control token for this submitter."""
        token = secrets.token_urlsafe(18)
        job["_owners"] = [*job["_owners"][-(MAX_OWNERS - 1) :], token]
        return {**self._snapshot(job), "token": token}

    def _touch(self, job: dict[str, Any]) -> None:
        job["version"] += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _new(self, key: str, label: str, total: int, **fields: Any) -> dict[str, Any]:
        job: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "key": key,
            "state": "queued",
            "step": 0,
            "total": total,
            "version": 0,
            "created": time.time(),
            "started": None,
            "finished": None,
            "error": None,
            "cached": False,
            "label": label,
            "node": None,  # the Ray node that ran it (for operators and the tests)
            "attempts": 0,
            "_preview": None,
            "_cancel": False,
            "_owners": [],  # control tokens of its submitters
        }
        job.update(fields)
        self._jobs[job["id"]] = job
        self._by_key[key] = job["id"]
        self._evict()
        return job

    def _evict(self) -> None:
        finished = [j for j in self._jobs.values() if j["state"] in FINISHED]
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job["id"]]
            if self._by_key.get(job["key"]) == job["id"]:
                del self._by_key[job["key"]]

    def _finish(self, job: dict[str, Any], state: str, error: dict[str, str] | None) -> None:
        job["state"], job["error"], job["finished"] = state, error, time.time()
        if state == "done":
            job["step"] = max(job["step"], job["total"])
        self._running.discard(job["id"])
        self._work.pop(job["id"], None)
        self._touch(job)
        self._evict()
        self._dispatch()

    # -- submitting -----------------------------------------------------------------------

    async def submit(
        self, key: str, spec: JobSpec, settings: Any, total: int, label: str, stored: bool
    ) -> dict[str, Any]:
        """``{"job": snapshot}``, or ``{"overloaded": detail, "retry_after": s}``.

        ``stored``: the caller found ``<key>.png`` in the shared results folder.
        """
        existing = self._jobs.get(self._by_key.get(key, ""))
        if existing is not None and existing["state"] not in ("failed", "cancelled"):
            self._jobs.move_to_end(existing["id"])
            return {"job": self._owned(existing)}
        if stored:
            job = self._new(key, label, total, state="done", step=total, cached=True)
            job["finished"] = job["created"]
            return {"job": self._owned(job)}
        free = max(0, self.max_running - len(self._running))
        if len(self._queue) >= self.max_queued + free:
            return {
                "overloaded": f"{len(self._queue)} jobs are queued (the limit) and "
                f"{len(self._running)} running on the cluster; retry later",
                "retry_after": max(1, len(self._queue)),
            }
        job = self._new(key, label, total)
        self._work[job["id"]] = (spec, settings)
        self._queue.append(job["id"])
        self._dispatch()
        return {"job": self._owned(job)}

    def _dispatch(self) -> None:
        while self._queue and len(self._running) < self.max_running:
            job = self._jobs[self._queue.popleft()]
            spec, settings = self._work.pop(job["id"])
            job["state"], job["started"] = "running", time.time()
            self._running.add(job["id"])
            self._touch(job)
            # An index job's task only drives Ray Data: its actors declare the CPUs and GPUs.
            coordinator = spec.kind == INDEX_JOB
            ref = self._run.options(
                num_cpus=0 if coordinator else self.job_cpus,
                num_gpus=0 if coordinator else self.job_gpus,
                max_retries=self.max_retries,  # a lost worker or node: run it again
                retry_exceptions=False,  # a job's own error is its result, not a retry
                name=f"convscope-job:{job['label'][:60]}",
            ).remote(
                ray.get_runtime_context().current_actor,
                job["id"],
                job["key"],
                spec,
                settings,
                str(self.results_dir),
            )
            task = asyncio.get_running_loop().create_task(self._watch(job["id"], ref))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _watch(self, job_id: str, ref: Any) -> None:
        try:
            outcome = await ref
        except Exception as exc:  # the worker (or its node) died and the retries are spent
            log.warning("job %s lost its worker: %s", job_id, exc)
            outcome = {
                "state": "failed",
                "error": {
                    "code": "job_worker_lost",
                    "detail": f"the Ray worker running this job died "
                    f"({type(exc).__name__}) and {self.max_retries} retries failed too; "
                    "submit it again",
                },
            }
        job = self._jobs.get(job_id)
        if job is not None and job["state"] not in FINISHED:
            self._finish(job, outcome["state"], outcome.get("error"))

    # -- the running task reports here ----------------------------------------------------

    async def started(self, job_id: str, node: str) -> bool:
        """A task (first run or a retry) starts the job on ``node``; False: do not run it."""
        job = self._jobs.get(job_id)
        if job is None or job["state"] in FINISHED or job["_cancel"]:
            return False
        job["node"], job["attempts"] = node, job["attempts"] + 1
        job["step"], job["_preview"] = 0, None  # a retry starts again from the beginning
        self._touch(job)
        return True

    async def report(self, job_id: str, step: int, total: int, preview: bytes | None) -> bool:
        """Record progress; returns True when the job was asked to stop."""
        job = self._jobs.get(job_id)
        if job is None or job["state"] in FINISHED:
            return True
        job["step"], job["total"] = step, total
        if preview is not None:
            job["_preview"] = preview
        self._touch(job)
        return bool(job["_cancel"])

    async def placement(self, job_id: str) -> dict[str, Any] | None:
        """Where the job ran and how often it started (operators, tests)."""
        job = self._jobs.get(job_id)
        return None if job is None else {"node": job["node"], "attempts": job["attempts"]}

    # -- reading --------------------------------------------------------------------------

    async def status(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return None if job is None else self._snapshot(job)

    async def preview(self, job_id: str) -> tuple[bool, bytes | None]:
        job = self._jobs.get(job_id)
        return (False, None) if job is None else (True, job["_preview"])

    async def wait_for_update(
        self, job_id: str, last_version: int, timeout: float
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            left = deadline - time.monotonic()
            if job["version"] > last_version or job["state"] in FINISHED or left <= 0:
                return self._snapshot(job)
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    async def counts(self) -> dict[str, int]:
        return {"running": len(self._running), "queued": len(self._queue)}

    # -- cancelling -----------------------------------------------------------------------

    async def cancel(self, job_id: str, token: str | None = None) -> dict[str, Any] | None:
        """Cancel a queued job at once; ask a running one to stop at its next step.

        ``token``: as :meth:`JobManager.cancel <convscope.services.compute.jobs.JobManager.cancel>`
        (one of the job's control tokens, or several comma-separated; the job stops when no
        other submitter holds one); ``{"denied": True}`` when none is the job's. ``None``: stop
        it (trusted in-cluster callers).
        """
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if token is not None:
            given = {t.strip() for t in token.split(",")[:MAX_OWNERS]} - {""}
            held = [
                t
                for t in job["_owners"]
                if any(hmac.compare_digest(t.encode(), g.encode()) for g in given)
            ]
            if not held:
                return {"denied": True}
            job["_owners"] = [t for t in job["_owners"] if t not in held]
            if job["_owners"]:
                return self._snapshot(job)  # other submitters still want it
        if job["state"] == "queued":
            self._queue.remove(job_id)
            self._finish(job, "cancelled", None)
        elif job["state"] == "running":
            job["_cancel"] = True
        return self._snapshot(job)
