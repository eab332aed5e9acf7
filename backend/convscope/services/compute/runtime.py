"""Process-wide tuning: torch threads that fit the container, an allocator that reuses memory,
and a garbage collector that leaves the loaded libraries and model alone.

All act on the whole process (torch's thread pool, glibc's malloc, Python's collector), so they
are called by whoever owns the process: ``Convscope``, at construction and once its default
model is loaded.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota in cores (cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``), None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def configure_threads(setting: int) -> int:
    """Give torch ``setting`` intra-op threads (0: one per available core); returns the count.

    torch's default counts the host's cores; in a container limited to 2 of 64 that means
    64 spinning threads on 2 cores, which is many times slower than 2.
    """
    threads = setting or available_cpus()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        log.info("torch uses %d threads", threads)
    return threads


def share_cores(threads: int) -> Callable[[int], None]:
    """A compute gate's ``on_enter``: split ``threads`` intra-op threads over what runs now.

    torch's intra-op thread count is per calling thread (OpenMP's ``nthreads`` setting is
    thread-local), so each computation can get its share: a lone request uses every core; two
    at once get half each instead of each spinning ``threads`` threads on the same cores.
    Measured in docs/performance.md ("Concurrent cold load").
    """

    def enter(running: int) -> None:
        share = max(1, threads // max(1, running))
        if torch.get_num_threads() != share:
            torch.set_num_threads(share)

    return enter


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_allocator(arenas: int) -> bool:
    """Keep freed tensor memory for reuse instead of giving it back to the OS at once.

    A capture keeps every layer's output (~80 MB for EfficientNet-Lite0) and the cache frees
    old captures as new ones arrive. With glibc's defaults that memory is unmapped on free and
    the next capture page-faults it back in, zero-filled by the kernel: it made a capture
    ~1.6x slower than with reuse. So: buffers up to 32 MiB come from the heap, a free heap top
    is kept up to 1 GiB, and at most ``arenas`` arenas (one per core) so that memory freed
    by one worker thread is reused by the next. A parameter whose ``MALLOC_*`` variable is
    set (e.g. ``MALLOC_ARENA_MAX`` in the Docker image) is left as the operator chose; nothing
    happens when libc is not glibc. Returns whether every parameter it set was accepted.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    wanted = (
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, 32 * 1024**2),
        ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, 1024**3),
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, max(1, arenas)),
    )
    done = all(mallopt(param, value) == 1 for env, param, value in wanted if env not in os.environ)
    log.debug("glibc malloc tuned for tensor reuse: %s", done)
    return done


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS once (glibc ``malloc_trim(0)``).

    The start-up (imports, the model load, the traced layer table's forward pass) leaves
    ~20 MiB free in the heap that ``tune_allocator``'s high trim threshold would keep for
    ever; an idle server need not hold them. Returns whether anything was released."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def freeze_heap() -> int:
    """Collect garbage, then keep every object alive now out of later full collections.

    Once torch, timm, FastAPI and the model are loaded the process holds ~400k objects that the
    cyclic collector scans on every full (generation 2) collection, holding the GIL: under load
    those came every few seconds and took 200-250 ms, and /healthz waited as long.
    ``gc.freeze`` moves them to the permanent generation: frozen objects are still freed when
    no longer referenced, but cycles among them are left for the process's end. The collector
    is enabled again afterwards (``convscope serve`` pauses it while it starts: the imports and
    the model load made 1 s of full collections). Returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    gc.enable()
    frozen = gc.get_freeze_count()
    log.info("%d objects frozen out of the cyclic garbage collector", frozen)
    return frozen


# Files of the GPU stack that the CUDA build of torch maps at import whether or not a GPU is
# ever used: the CUDA runtime and its libraries (wheels under nvidia/), torch's CUDA halves,
# cuda-python's bindings and triton.
_GPU_LIBRARIES = re.compile(
    r"/nvidia/|/libtorch_cuda[^/]*$|/libc10_cuda[^/]*$|/libcaffe2_nvrtc[^/]*$|/cuda/bindings/|/triton/"
)
# torch's own CPU libraries: most of their resident text ran once, registering operators.
_TORCH_LIBRARIES = re.compile(r"/torch/lib/lib[^/]+\.so[^/]*$")
_MADV_DONTNEED, _MADV_PAGEOUT = 4, 21  # linux/mman.h; PAGEOUT since Linux 5.4


def _library_ranges(smaps: str, pattern: re.Pattern[str]) -> list[tuple[int, int, bool]]:
    """``(start, end, clean)`` of each mapping of a file matching ``pattern``; ``clean``: not
    writable and no private (anonymous) page in it, so every resident page is the file's."""
    ranges: list[list[Any]] = []
    current: list[Any] | None = None
    for line in smaps.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:
            current = None
            if len(head) == 6 and pattern.search(head[5]):
                start, end = (int(v, 16) for v in head[0].split("-"))
                current = [start, end, "w" not in head[1]]
                ranges.append(current)
        elif current is not None and line.startswith("Anonymous:") and int(head[1]) > 0:
            current[2] = False
    return [(int(a), int(b), bool(c)) for a, b, c in ranges]


def release_library_pages(
    cpu_only: bool | None = None, smaps: Path = Path("/proc/self/smaps")
) -> int:
    """Unmap resident library pages an idle server does not need; returns the bytes advised.

    After ``import torch`` (CUDA build) and a model load, ~420 MiB of the process's resident
    set are pages of shared libraries (docs/performance.md, "Idle footprint"):

    * GPU libraries (libnvrtc, libcublasLt, libnvJitLink, libtorch_cuda, ...: ~270 MiB), which a
      process computing on the CPU never touches again: all of their mappings (``cpu_only``;
      by default: this process has not initialised CUDA);
    * torch's CPU libraries (``libtorch_cpu.so``: 143 MiB resident), mostly code that ran once
      at import to register operators: their clean mappings only.

    A mapping that is read-only and holds no private page is only the file's pages:
    ``MADV_DONTNEED`` unmaps them, the page cache keeps them, and a later touch maps them
    back (a minor fault: the pages a request needs return on the first request). Other
    mappings of GPU libraries get ``MADV_PAGEOUT``, the kernel's own reclaim asked for early,
    which never discards data. No-op on other systems and kernels.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        text = smaps.read_text()
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if cpu_only is None:
        cpu_only = not torch.cuda.is_initialized()
    plan = [
        (a, b, _MADV_DONTNEED) for a, b, clean in _library_ranges(text, _TORCH_LIBRARIES) if clean
    ]
    if cpu_only:
        plan += [
            (a, b, _MADV_DONTNEED if clean else _MADV_PAGEOUT)
            for a, b, clean in _library_ranges(text, _GPU_LIBRARIES)
        ]
    advised = 0
    for start, end, advice in plan:
        if madvise(start, end - start, advice) != 0:
            log.debug("madvise refused (errno %d): stopped", ctypes.get_errno())
            return advised
        advised += end - start
    return advised
