"""Long computations (feature visualisation) as jobs: bounded workers, queue, cache, cancel.

A :class:`JobManager` runs at most ``max_running`` jobs at once on its own worker threads and
keeps at most ``max_queued`` waiting; beyond that :meth:`JobManager.submit` raises
:class:`OverloadedError`. Each job has a cache key (see :func:`cache_key`): submitting a key
that is queued, running or done returns that job instead of starting another, and a done
job's PNG may also be read back from ``results_dir`` (shared between replicas).

Watchers poll :meth:`JobManager.status` or block in :meth:`JobManager.wait_for_update`
(a ``threading.Condition``; an async server calls it from a thread) until the job's
``version`` moves past the one they saw: that is what a server-sent-events route streams.
No module state: the app owns one manager and calls :meth:`JobManager.shutdown` at exit.

Over 300 lines: the one job primitive: queue, workers, cancel, tokens, previews, the
on-disk result cache and the runner interface the cluster implements, under one lock.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from convscope.errors import (
    CancelledError,
    ConvscopeError,
    JobNotFinishedError,
    JobTokenError,
    OverloadedError,
    UnknownJobError,
)
from convscope.services.storage.files import atomic_write, sha256_bytes

logger = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})

MAX_LABEL_CHARS = 200
MAX_OWNERS = 64  # control tokens kept per job (identical submissions share one job)

PreviewEncoder = Callable[[torch.Tensor], bytes]
"""Turns a preview ``Tensor[N, 3, H, W]`` in [0, 1] into PNG bytes."""


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def cache_key(**parts: Any) -> str:
    """A stable SHA-256 hex key of JSON-able ``parts``, e.g. ``model``, ``weights``
    (a hash of the weights), ``objectives`` (``Objective.describe()`` texts), ``settings``
    (``dataclasses.asdict``), ``seed``. Key order does not matter."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(text.encode())


@dataclass
class JobContext:
    """What a running job's work function gets: report progress, see cancellation."""

    job_id: str
    cancel_event: threading.Event
    _report: Callable[[int, int, torch.Tensor | None], None]

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        """Record progress (and a preview ``Tensor[N, 3, H, W]``); raises if cancelled.

        Matches ``optimize.ProgressFn``, so it can be passed as ``progress=ctx.progress``.
        """
        self._report(step, total, preview)
        if self.cancel_event.is_set():
            raise CancelledError(f"job {self.job_id} cancelled at step {step} of {total}")


Work = Callable[[JobContext], bytes]
"""A job's body: returns the result PNG bytes."""


@dataclass(frozen=True)
class JobSpec:
    """A job's work described as data: ``kind`` (``"optimize"``, ``"deepdream"``, ...) and
    picklable ``params``. A runner on another process (``services/cluster``) rebuilds the
    :data:`Work` from it with the same registry and settings; the in-process manager does
    not need it."""

    kind: str
    params: dict[str, Any]


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job, safe to serialise (``as_dict``)."""

    id: str
    key: str
    state: JobState
    step: int
    total: int
    queue_position: int | None  # 0 = next to start; None unless queued
    version: int
    created: float
    started: float | None
    finished: float | None
    error: dict[str, str] | None  # {"code": ..., "detail": ...} when failed
    has_preview: bool
    cached: bool  # True when this job was served from the cache or the results folder
    label: str
    # The submitter's control token (cancel requires it); only in what submit() returns.
    token: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Job:
    id: str
    key: str
    work: Work | None
    label: str
    state: JobState = "queued"
    step: int = 0
    total: int = 0
    version: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: dict[str, str] | None = None
    preview: torch.Tensor | bytes | None = None
    result: bytes | None = None
    cached: bool = False
    cancel_event: threading.Event = field(default_factory=threading.Event)
    owners: list[str] = field(default_factory=list)  # control tokens of its submitters


class JobManager:
    """Run jobs on ``max_running`` worker threads with a queue of at most ``max_queued``.

    ``keep_finished`` bounds how many finished jobs (and their PNGs) stay in memory, oldest
    dropped first. ``preview_encoder`` (e.g. a PNG encoder from ``convscope.render``) turns
    preview tensors into bytes lazily, in :meth:`preview_png`.
    """

    def __init__(
        self,
        max_running: int = 2,
        max_queued: int = 32,
        *,
        results_dir: Path | str | None = None,
        keep_finished: int = 256,
        preview_encoder: PreviewEncoder | None = None,
    ) -> None:
        if max_running < 1 or max_queued < 0 or keep_finished < 1:
            raise ValueError("expected max_running >= 1, max_queued >= 0, keep_finished >= 1")
        self.max_running = max_running
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self.results_dir = Path(results_dir) if results_dir is not None else None
        self.preview_encoder = preview_encoder
        self._lock = threading.Condition()
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._by_key: dict[str, str] = {}
        self._queue: deque[str] = deque()
        self._running = 0
        self._workers: list[threading.Thread] = []
        self._closed = False
        self._listeners: dict[str, list[Callable[[], None]]] = {}

    # -- submitting ---------------------------------------------------------------------

    def submit(
        self,
        key: str,
        work: Work,
        *,
        total: int = 0,
        label: str = "",
        spec: JobSpec | None = None,
    ) -> JobStatus:
        """Queue ``work`` under ``key``, or return the job that already has that key.

        A queued, running or done job with the same key is returned as is; failed and
        cancelled ones are retried. A PNG ``<key>.png`` in ``results_dir`` becomes a done
        job at once. Raises :class:`OverloadedError` when the queue is full. ``spec`` (the
        work as data) is for runners on other processes; this one runs ``work``.
        """
        del spec
        label = label[:MAX_LABEL_CHARS]  # echoed in every status: never unbounded input
        with self._lock:
            if self._closed:
                raise OverloadedError("the job manager is shutting down", retry_after=5)
            existing = self._jobs.get(self._by_key.get(key, ""))
            if existing is not None and existing.state not in ("failed", "cancelled"):
                self._jobs.move_to_end(existing.id)
                return self._owned(existing)
            stored = self._read_result(key)
            if stored is not None:
                job = _Job(
                    uuid.uuid4().hex,
                    key,
                    None,
                    label,
                    state="done",
                    total=total,
                    step=total,
                    result=stored,
                    cached=True,
                )
                job.finished = job.created
                self._add(job)
                return self._owned(job)
            # Idle workers will take queued jobs at once: they do not count against the queue.
            if len(self._queue) >= self.max_queued + max(0, self.max_running - self._running):
                raise OverloadedError(
                    f"{len(self._queue)} jobs are queued (the limit) and {self._running} "
                    f"running; retry later",
                    retry_after=max(1, len(self._queue)),
                )
            job = _Job(uuid.uuid4().hex, key, work, label, total=total)
            self._add(job)
            self._queue.append(job.id)
            self._ensure_workers()
            self._lock.notify_all()
            return self._owned(job)

    def _owned(self, job: _Job) -> JobStatus:
        """A snapshot with a new control token for this submitter (lock held)."""
        token = secrets.token_urlsafe(18)
        job.owners = [*job.owners[-(MAX_OWNERS - 1) :], token]
        return replace(self._snapshot(job), token=token)

    def _add(self, job: _Job) -> None:
        self._jobs[job.id] = job
        self._by_key[job.key] = job.id
        self._evict()

    def _evict(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINISHED]
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]
            if self._by_key.get(job.key) == job.id:
                del self._by_key[job.key]

    def _ensure_workers(self) -> None:
        self._workers = [t for t in self._workers if t.is_alive()]
        while len(self._workers) < self.max_running:
            thread = threading.Thread(target=self._worker, name="convscope-job", daemon=True)
            thread.start()
            self._workers.append(thread)

    # -- reading ------------------------------------------------------------------------

    def _get(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJobError(job_id)
        return job

    def _snapshot(self, job: _Job) -> JobStatus:
        position = None
        if job.state == "queued":
            position = self._queue.index(job.id) if job.id in self._queue else 0
        return JobStatus(
            id=job.id,
            key=job.key,
            state=job.state,
            step=job.step,
            total=job.total,
            queue_position=position,
            version=job.version,
            created=job.created,
            started=job.started,
            finished=job.finished,
            error=job.error,
            has_preview=job.preview is not None,
            cached=job.cached,
            label=job.label,
        )

    def status(self, job_id: str) -> JobStatus:
        """The job's current state. Raises :class:`UnknownJobError`."""
        with self._lock:
            return self._snapshot(self._get(job_id))

    def result_png(self, job_id: str) -> bytes:
        """The done job's PNG. Raises :class:`JobNotFinishedError` for other states."""
        with self._lock:
            job = self._get(job_id)
            if job.state != "done" or job.result is None:
                raise JobNotFinishedError(job_id, job.state)
            return job.result

    def preview_png(self, job_id: str) -> bytes | None:
        """The latest preview as PNG bytes (None if there is none yet)."""
        with self._lock:
            job = self._get(job_id)
            preview = job.preview
        if isinstance(preview, torch.Tensor):
            if self.preview_encoder is None:
                return None
            encoded = self.preview_encoder(preview)
            with self._lock:
                if job.preview is preview:
                    job.preview = encoded
            return encoded
        return preview

    def wait_for_update(self, job_id: str, last_version: int, timeout: float) -> JobStatus:
        """Block until the job's ``version`` exceeds ``last_version`` or it is finished, or
        ``timeout`` seconds pass; return its status either way."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                job = self._get(job_id)
                if job.version > last_version or job.state in FINISHED:
                    return self._snapshot(job)
                left = deadline - time.monotonic()
                if left <= 0:
                    return self._snapshot(job)
                self._lock.wait(left)

    def subscribe(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` (from a worker thread, with the manager's lock held: it must
        only hand over, e.g. ``loop.call_soon_threadsafe(event.set)``) whenever the job's
        version moves. Returns the function that unsubscribes. An async server waits for
        updates this way without a thread per watcher. Raises :class:`UnknownJobError`."""
        with self._lock:
            self._get(job_id)
            self._listeners.setdefault(job_id, []).append(callback)

        def unsubscribe() -> None:
            with self._lock:
                callbacks = self._listeners.get(job_id, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._listeners.pop(job_id, None)

        return unsubscribe

    def _notify(self, job_id: str) -> None:
        for callback in self._listeners.get(job_id, ()):
            try:
                callback()
            except Exception:  # a closed event loop: its watcher is gone
                logger.debug("job listener failed", exc_info=True)

    def counts(self) -> dict[str, int]:
        """``{"running": r, "queued": q}`` for metrics and health checks."""
        with self._lock:
            return {"running": self._running, "queued": len(self._queue)}

    # -- cancelling and stopping --------------------------------------------------------

    def cancel(self, job_id: str, token: str | None = None) -> JobStatus:
        """Cancel a queued job at once, or ask a running one to stop at its next step.

        With ``token`` (what :meth:`submit` gave a submitter, or several, comma-separated,
        from one client that submitted the same work more than once; clients must give one): raises
        :class:`JobTokenError` unless it is one of the job's, and the job stops only when no
        other submitter of the same work still holds a token. ``None``: stop it (in-process
        callers). Finished jobs are returned unchanged.
        """
        with self._lock:
            job = self._get(job_id)
            if token is not None:
                given = {t.strip() for t in token.split(",")[:MAX_OWNERS]} - {""}
                held = [t for t in job.owners if any(_same(t, g) for g in given)]
                if not held:
                    raise JobTokenError(job_id)
                job.owners = [t for t in job.owners if t not in held]
                if job.owners:
                    return self._snapshot(job)  # other submitters still want it
            if job.state == "queued":
                self._queue.remove(job.id)
                self._finish(job, "cancelled")
            elif job.state == "running":
                job.cancel_event.set()
            return self._snapshot(job)

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Cancel everything and stop the workers (``wait``: join them)."""
        with self._lock:
            self._closed = True
            for job_id in list(self._queue):
                self._finish(self._jobs[job_id], "cancelled")
            self._queue.clear()
            for job in self._jobs.values():
                job.cancel_event.set()
            self._lock.notify_all()
            workers = list(self._workers)
        if wait:
            for thread in workers:
                thread.join(timeout)

    # -- the workers --------------------------------------------------------------------

    def _finish(self, job: _Job, state: JobState, error: dict[str, str] | None = None) -> None:
        """Called with the lock held."""
        job.state = state
        job.error = error
        job.finished = time.time()
        job.work = None  # drop the closure (and the model it may hold)
        job.version += 1
        self._evict()
        self._lock.notify_all()
        self._notify(job.id)

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._jobs[self._queue.popleft()]
                job.state, job.started = "running", time.time()
                job.version += 1
                self._running += 1
                work = job.work
                self._lock.notify_all()
                self._notify(job.id)
            try:
                self._run(job, work)
            finally:
                with self._lock:
                    self._running -= 1
                    self._lock.notify_all()

    def _run(self, job: _Job, work: Work | None) -> None:
        """Run one job outside the lock and record how it ended.

        A result is written to ``results_dir`` before the job shows as done, so whoever sees
        "done" can also find the file.
        """
        context = JobContext(job.id, job.cancel_event, lambda s, t, p: self._report(job, s, t, p))
        try:
            if work is None:
                raise RuntimeError("job has no work")
            if job.cancel_event.is_set():
                raise CancelledError(f"job {job.id} cancelled before it started")
            result = work(context)
        except CancelledError:
            with self._lock:
                self._finish(job, "cancelled")
            return
        except ConvscopeError as exc:
            with self._lock:
                self._finish(job, "failed", {"code": exc.code, "detail": exc.detail})
            return
        except Exception as exc:  # a job must never kill its worker
            logger.exception("job %s (%s) failed", job.id, job.label)
            with self._lock:
                self._finish(
                    job,
                    "failed",
                    {"code": "internal_error", "detail": f"{type(exc).__name__}: {exc}"},
                )
            return
        self._write_result(job.key, result)
        with self._lock:
            job.result = result
            job.step = max(job.step, job.total)
            self._finish(job, "done")

    def _report(self, job: _Job, step: int, total: int, preview: torch.Tensor | None) -> None:
        with self._lock:
            job.step, job.total = step, total
            if preview is not None:
                job.preview = preview.detach().cpu()
            job.version += 1
            self._lock.notify_all()
            self._notify(job.id)

    # -- the results folder -------------------------------------------------------------

    def result_path(self, key: str) -> Path | None:
        """Where the PNG for ``key`` is (or would be) stored, if there is a results folder."""
        return None if self.results_dir is None else self.results_dir / f"{key}.png"

    def _read_result(self, key: str) -> bytes | None:
        path = self.result_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return path.read_bytes()
        except OSError:
            logger.warning("could not read %s", path, exc_info=True)
            return None

    def _write_result(self, key: str, data: bytes) -> None:
        path = self.result_path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)  # another replica never reads half a file
        except OSError:
            logger.warning("could not write %s", path, exc_info=True)


class JobRunner(Protocol):
    """What the facade and the capabilities need from a job manager: :class:`JobManager`
    in one process, or ``services.cluster.jobs.RayJobManager`` whose job table lives in a
    Ray cluster (``CONVSCOPE_RAY_ADDRESS``)."""

    def submit(
        self,
        key: str,
        work: Work,
        *,
        total: int = 0,
        label: str = "",
        spec: JobSpec | None = None,
    ) -> JobStatus: ...

    def status(self, job_id: str) -> JobStatus: ...

    def result_png(self, job_id: str) -> bytes: ...

    def preview_png(self, job_id: str) -> bytes | None: ...

    def wait_for_update(self, job_id: str, last_version: int, timeout: float) -> JobStatus: ...

    def counts(self) -> dict[str, int]: ...

    def cancel(self, job_id: str, token: str | None = None) -> JobStatus: ...

    def subscribe(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]: ...

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None: ...
