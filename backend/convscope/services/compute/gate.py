"""Backpressure: a bounded number of computations at once and a bounded queue behind them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from convscope.errors import OverloadedError


class ComputeGate:
    """At most ``slots`` computations run; at most ``queue`` wait; the rest are refused at once."""

    def __init__(
        self,
        slots: int,
        queue: int,
        *,
        wait_seconds: float = 60.0,
        on_enter: Callable[[int], None] | None = None,
    ) -> None:
        self.slots = slots
        self.queue = queue
        self.wait_seconds = wait_seconds
        # Called in the computing thread with the number of computations now running (this
        # one included), before it computes: the thread scheduler (runtime.share_cores).
        self._on_enter = on_enter
        self._semaphore = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.running = 0
        self.waiting = 0
        self.rejected = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self.running >= self.slots and self.waiting >= self.queue:
                self.rejected += 1
                raise OverloadedError(
                    f"server busy: {self.running} computations running and {self.waiting} "
                    "queued (the limit); retry shortly",
                    retry_after=1,
                )
            self.waiting += 1
        acquired = self._semaphore.acquire(timeout=self.wait_seconds)
        with self._lock:
            self.waiting -= 1
            if acquired:
                self.running += 1
        if not acquired:
            with self._lock:
                self.rejected += 1
            raise OverloadedError("server busy: waited too long for a compute slot", retry_after=2)
        try:
            if self._on_enter is not None:
                self._on_enter(self.running)
            yield
        finally:
            with self._lock:
                self.running -= 1
            self._semaphore.release()
