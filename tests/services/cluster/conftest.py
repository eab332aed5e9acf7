"""Fixtures for the Ray tests: a real local cluster on 127.0.0.1 (``localray.LocalRay``)
and API processes connected to it. Skipped where the `cluster` extra is not installed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from tests.services.cluster.localray import LocalRay, ray_env


@contextlib.contextmanager
def ray_environ() -> Iterator[None]:
    """Child processes started inside (API servers, the Serve driver) get the loopback-only
    Ray settings and no CONVSCOPE_ variables but those they are given."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(ray_env())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_cluster(**kwargs: float) -> LocalRay:
    pytest.importorskip("ray", reason="the `cluster` extra (pip install '.[cluster]')")
    cluster = LocalRay(**kwargs)  # type: ignore[arg-type]
    cluster.check_loopback()  # before any request: every listener on 127.0.0.1
    return cluster
