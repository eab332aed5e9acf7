"""ByteLRU: byte bound, LRU order, and single-flight computation under concurrency."""

from __future__ import annotations

import threading
import time

import pytest

from convscope.services.storage.cache import ByteLRU

pytestmark = pytest.mark.quick


def test_evicts_least_recently_used_by_bytes() -> None:
    cache: ByteLRU[bytes] = ByteLRU(10, len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recent
    cache.put("c", b"1234")  # 12 bytes > 10: b goes, not a
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.bytes == 8 and len(cache) == 2
    cache.put("huge", b"x" * 11)  # larger than the whole cache: not kept, nothing evicted
    assert "huge" not in cache and cache.bytes == 8
    assert (cache.hits, cache.misses) == (1, 0)
    assert cache.get("b") is None and cache.misses == 1


def test_single_flight_computes_once_for_concurrent_callers() -> None:
    cache: ByteLRU[bytes] = ByteLRU(1 << 20, len)
    calls = 0
    started = threading.Event()

    def compute() -> bytes:
        nonlocal calls
        calls += 1
        started.set()
        time.sleep(0.2)  # the others arrive while this one runs
        return b"value"

    results: list[bytes] = []

    def ask() -> None:
        results.append(cache.get_or_compute("k", compute))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert started.is_set()
    assert calls == 1
    assert results == [b"value"] * 8
    assert cache.misses == 1 and cache.hits == 0  # waiters shared the first result
    assert cache.get_or_compute("k", compute) == b"value" and calls == 1 and cache.hits == 1


def test_single_flight_shares_the_exception_and_retries_later() -> None:
    cache: ByteLRU[bytes] = ByteLRU(1 << 20, len)
    gate = threading.Event()
    errors: list[BaseException] = []

    def failing() -> bytes:
        gate.wait(5)
        raise ValueError("boom")

    def ask() -> None:
        try:
            cache.get_or_compute("k", failing)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(errors) == 4 and all(str(e) == "boom" for e in errors)
    assert "k" not in cache
    assert cache.get_or_compute("k", lambda: b"ok") == b"ok"  # not stuck on the failure
