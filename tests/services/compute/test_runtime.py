"""Releasing library pages: which mappings, and that torch works the same afterwards."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from convscope.services.compute.runtime import (
    _GPU_LIBRARIES,
    _TORCH_LIBRARIES,
    _library_ranges,
)

SMAPS = """\
7f0000000000-7f0000100000 r--p 00000000 fd:01 11 /venv/torch/lib/libtorch_cpu.so
Rss:                1024 kB
Anonymous:             0 kB
7f0000100000-7f0000200000 r-xp 00100000 fd:01 11 /venv/torch/lib/libtorch_cpu.so
Rss:                1024 kB
Anonymous:             0 kB
7f0000200000-7f0000210000 r--p 00200000 fd:01 11 /venv/torch/lib/libtorch_cpu.so
Rss:                  64 kB
Anonymous:            64 kB
7f0000210000-7f0000220000 rw-p 00210000 fd:01 11 /venv/torch/lib/libtorch_cpu.so
Rss:                  64 kB
Anonymous:             0 kB
7f0000220000-7f0000230000 rw-p 00000000 00:00 0
Rss:                  64 kB
Anonymous:            64 kB
7f0000300000-7f0000400000 r-xp 00000000 fd:01 12 /venv/nvidia/cu13/lib/libcublasLt.so.13
Rss:                1024 kB
Anonymous:             0 kB
7f0000400000-7f0000410000 rw-p 00100000 fd:01 12 /venv/nvidia/cu13/lib/libcublasLt.so.13
Rss:                  64 kB
Anonymous:            64 kB
7f0000500000-7f0000600000 r-xp 00000000 fd:01 13 /venv/numpy/_core/_multiarray_umath.so
Rss:                1024 kB
Anonymous:             0 kB
"""


@pytest.mark.quick
def test_library_ranges_classify_clean_mappings() -> None:
    torch_ranges = _library_ranges(SMAPS, _TORCH_LIBRARIES)
    assert torch_ranges == [
        (0x7F0000000000, 0x7F0000100000, True),  # read-only, file pages only
        (0x7F0000100000, 0x7F0000200000, True),  # text
        (0x7F0000200000, 0x7F0000210000, False),  # RELRO: relocated (private) pages
        (0x7F0000210000, 0x7F0000220000, False),  # writable: never unmapped
    ]
    assert _library_ranges(SMAPS, _GPU_LIBRARIES) == [
        (0x7F0000300000, 0x7F0000400000, True),
        (0x7F0000400000, 0x7F0000410000, False),  # .data with private pages: paged out only
    ]


@pytest.mark.slow
def test_release_library_pages_shrinks_rss_and_torch_still_works() -> None:
    """In a fresh interpreter: import torch, run a conv net, release, run it again."""
    script = textwrap.dedent(
        """
        import torch
        from convscope.services.compute.runtime import release_library_pages

        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) * 1024

        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
        ).eval()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            before = net(x)
        rss_before = rss()
        advised = release_library_pages(cpu_only=True)
        rss_after = rss()
        with torch.no_grad():
            after = net(x)
        x.requires_grad_(True)
        grad = torch.autograd.grad(net(x).sum(), x)[0]
        print(advised, rss_before, rss_after, bool(torch.equal(before, after)),
              bool(grad.abs().sum() > 0))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    advised, rss_before, rss_after, same, grad = out.stdout.split()
    assert int(advised) > 0
    # torch's run-once code at least (and the CUDA build's libraries where installed)
    assert int(rss_before) - int(rss_after) > 50 * 1024**2, out.stdout
    assert same == "True" and grad == "True"
