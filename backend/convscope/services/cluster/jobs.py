"""``RayJobManager``: the job manager for API processes connected to a Ray cluster.

Same interface and meaning as :class:`~convscope.services.compute.jobs.JobManager` (queue
bound, progress, previews, cancel, a results folder, de-duplication by cache key), but the
job table is one named detached actor (:class:`table.JobTable`) shared by every process
connected to the cluster, and each job runs as a Ray task that rebuilds its work from its
:class:`JobSpec`. Work submitted without a spec (a capability not yet described as data)
runs in this process on a local :class:`JobManager`, visible only here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ray

from convscope.config import Settings
from convscope.errors import (
    JobNotFinishedError,
    JobTokenError,
    OverloadedError,
    UnknownJobError,
)
from convscope.services.cluster.table import TABLE_NAME, JobTable
from convscope.services.compute.jobs import JobManager, JobSpec, JobStatus, Work

log = logging.getLogger(__name__)

_FIELDS = frozenset(JobStatus.__dataclass_fields__)
CALL_TIMEOUT = 30.0  # seconds for a table call (not for waits, which carry their own)


def connect(settings: Settings) -> None:
    """Join the cluster at ``settings.ray_address`` (no-op inside a Ray worker or replica)."""
    if not ray.is_initialized():
        ray.init(
            address=settings.ray_address,
            namespace=settings.ray_namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )


def job_table(settings: Settings) -> Any:
    """The cluster's job table actor, created by the first process that asks."""
    connect(settings)
    actor = ray.remote(JobTable).options(
        name=TABLE_NAME,
        namespace=settings.ray_namespace,
        lifetime="detached",  # outlives the API process that happened to create it
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=1000,
    )
    return actor.remote(
        settings.max_running_jobs,
        settings.max_queued_jobs,
        results_dir=str(settings.data_dir / "results"),
        job_cpus=settings.ray_job_cpus,
        job_gpus=settings.ray_job_gpus,
    )


def _status(snapshot: dict[str, Any] | None, job_id: str) -> JobStatus:
    if snapshot is None:
        raise UnknownJobError(job_id)
    return JobStatus(**{k: v for k, v in snapshot.items() if k in _FIELDS})


class RayJobManager:
    """A :class:`~convscope.services.compute.jobs.JobRunner` backed by the cluster's table."""

    def __init__(self, settings: Settings, local: JobManager) -> None:
        self.settings = settings
        self.results_dir = settings.data_dir / "results"
        self.local = local
        self.table = job_table(settings)

    def _call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        return ray.get(getattr(self.table, method).remote(*args), timeout=timeout)

    def _is_local(self, job_id: str) -> bool:
        try:
            self.local.status(job_id)
        except UnknownJobError:
            return False
        return True

    def submit(
        self,
        key: str,
        work: Work,
        *,
        total: int = 0,
        label: str = "",
        spec: JobSpec | None = None,
    ) -> JobStatus:
        if spec is None:
            return self.local.submit(key, work, total=total, label=label)
        stored = (self.results_dir / f"{key}.png").is_file()
        answer = self._call("submit", key, spec, self.settings, total, label, stored)
        if "overloaded" in answer:
            raise OverloadedError(answer["overloaded"], retry_after=answer["retry_after"])
        return _status(answer["job"], "")

    def status(self, job_id: str) -> JobStatus:
        if self._is_local(job_id):
            return self.local.status(job_id)
        return _status(self._call("status", job_id), job_id)

    def result_png(self, job_id: str) -> bytes:
        if self._is_local(job_id):
            return self.local.result_png(job_id)
        job = self.status(job_id)
        if job.state != "done":
            raise JobNotFinishedError(job_id, job.state)
        return (self.results_dir / f"{job.key}.png").read_bytes()

    def preview_png(self, job_id: str) -> bytes | None:
        if self._is_local(job_id):
            return self.local.preview_png(job_id)
        known, png = self._call("preview", job_id)
        if not known:
            raise UnknownJobError(job_id)
        return png

    def wait_for_update(self, job_id: str, last_version: int, timeout: float) -> JobStatus:
        if self._is_local(job_id):
            return self.local.wait_for_update(job_id, last_version, timeout)
        found = self._call(
            "wait_for_update", job_id, last_version, timeout, timeout=timeout + CALL_TIMEOUT
        )
        return _status(found, job_id)

    def counts(self) -> dict[str, int]:
        """The cluster's counts (every process's jobs) plus this process's local ones."""
        cluster = self._call("counts")
        local = self.local.counts()
        return {k: cluster[k] + local[k] for k in ("running", "queued")}

    def placement(self, job_id: str) -> dict[str, Any]:
        """``{"node": ray node id, "attempts": n}`` of a cluster job."""
        found = self._call("placement", job_id)
        if found is None:
            raise UnknownJobError(job_id)
        return found

    def cancel(self, job_id: str, token: str | None = None) -> JobStatus:
        if self._is_local(job_id):
            return self.local.cancel(job_id, token)
        answer = self._call("cancel", job_id, token)
        if answer is not None and answer.get("denied"):
            raise JobTokenError(job_id)  # the same 403 job_token_invalid as in one process
        return _status(answer, job_id)

    def subscribe(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Local jobs wake their watchers; cluster jobs are polled by them (no callback)."""
        if self._is_local(job_id):
            return self.local.subscribe(job_id, callback)
        self.status(job_id)  # UnknownJobError as the local manager would raise
        return lambda: None

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop this process's local jobs; cluster jobs belong to the cluster and go on."""
        self.local.shutdown(wait, timeout)
