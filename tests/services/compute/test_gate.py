"""ComputeGate: slots, a bounded queue, immediate refusal beyond it, and a wait limit."""

from __future__ import annotations

import threading
import time

import pytest

from convscope.errors import OverloadedError
from convscope.services.compute.gate import ComputeGate

pytestmark = pytest.mark.quick


def _hold(gate: ComputeGate, release: threading.Event, entered: threading.Event) -> None:
    with gate.slot():
        entered.set()
        release.wait(5)


def test_slots_then_queue_then_refusal() -> None:
    gate = ComputeGate(slots=1, queue=1, wait_seconds=5)
    release = threading.Event()
    first, second = threading.Event(), threading.Event()
    runner = threading.Thread(target=_hold, args=(gate, release, first))
    runner.start()
    assert first.wait(5)
    waiter = threading.Thread(target=_hold, args=(gate, release, second))
    waiter.start()
    deadline = time.monotonic() + 5
    while gate.waiting != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (gate.running, gate.waiting) == (1, 1)
    # Slot busy, queue full: refused at once.
    with pytest.raises(OverloadedError) as refused, gate.slot():
        pass
    assert refused.value.retry_after == 1 and gate.rejected == 1
    release.set()
    runner.join(5)
    waiter.join(5)
    assert second.is_set()  # the queued one ran once the slot was free
    assert (gate.running, gate.waiting, gate.rejected) == (0, 0, 1)


def test_waiting_too_long_is_refused() -> None:
    gate = ComputeGate(slots=1, queue=4, wait_seconds=0.1)
    release, entered = threading.Event(), threading.Event()
    runner = threading.Thread(target=_hold, args=(gate, release, entered))
    runner.start()
    assert entered.wait(5)
    with pytest.raises(OverloadedError, match="waited too long") as refused, gate.slot():
        pass
    assert refused.value.retry_after == 2
    release.set()
    runner.join(5)
    assert (gate.running, gate.waiting, gate.rejected) == (0, 0, 1)


def test_slot_is_released_on_error() -> None:
    gate = ComputeGate(slots=1, queue=0, wait_seconds=0.1)
    with pytest.raises(RuntimeError), gate.slot():
        raise RuntimeError("inside")
    with gate.slot():  # free again
        assert gate.running == 1
    assert gate.running == 0
