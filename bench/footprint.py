"""Idle footprint of `convscope serve`: resident size and where it lies, by mapping.

    python -m bench.footprint [--server-env NAME=VALUE ...]

Starts a server with the default model (``bench.server.running_server``), waits
``--settle`` seconds after ``/readyz``, and prints ``VmRSS``/``VmHWM`` and the largest
mappings of ``/proc/<pid>/smaps`` (anonymous, heap, each shared library). To compare two
versions in one run, pass ``--server-env PYTHONPATH=<other checkout>/backend`` for one.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from bench.server import running_server

MIB = 1024 * 1024


def mappings(pid: int) -> dict[str, int]:
    """Resident bytes per mapped file (``[anon]``, ``[heap]`` for the others)."""
    sizes: dict[str, int] = {}
    current = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            current = parts[5] if len(parts) > 5 else "[anon]"
        elif line.startswith("Rss:"):
            sizes[current] = sizes.get(current, 0) + int(line.split()[1]) * 1024
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.server_env)
    with running_server(env) as server:
        time.sleep(args.settle)
        memory = server.memory()
        sizes = mappings(server.pid)
    out = sys.stdout
    out.write(f"RSS idle {memory['VmRSS'] / MIB:.0f} MiB (peak {memory['VmHWM'] / MIB:.0f})\n")
    for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[: args.top]:
        out.write(f"{size / MIB:8.1f} MiB  {name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
