"""Medians, percentiles and the one table the benchmark prints."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100): a value that was actually observed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Row:
    """One line: what, convscope's value, the reference's, and the target on their ratio."""

    name: str
    value: float
    unit: str
    reference: float | None = None
    reference_name: str = ""
    target: str = ""  # e.g. "<= 1.3"; checked against ``ratio``
    samples: int | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference == 0:
            return None
        return self.value / self.reference

    @property
    def verdict(self) -> str:
        if not self.target or self.ratio is None:
            return ""
        op, _, bound = self.target.partition(" ")
        limit = float(bound.rstrip("x"))
        ok = self.ratio <= limit if op == "<=" else self.ratio >= limit
        return "ok" if ok else "MISSED"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "req/s":
        return f"{value:.1f} req/s"
    return f"{value:g} {unit}".strip()


def render(rows: Sequence[Row]) -> str:
    """A fixed-width text table (also valid Markdown)."""
    header = ["measurement", "convscope", "reference", "ratio", "target", "", "n"]
    lines = [
        [
            r.name,
            _fmt(r.value, r.unit),
            f"{_fmt(r.reference, r.unit)} {r.reference_name}".strip() if r.reference else "-",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            r.target or "-",
            r.verdict,
            str(r.samples) if r.samples is not None else "",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(cells) for cells in lines]
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note]
    return "\n".join(out + (["", *notes] if notes else []))
