"""What feature visualisation maximises: channels, neurons, whole layers, and weighted sums.

An :class:`Objective` is a weighted sum of :class:`Term` s; ``-objective`` minimises and
``a * obj1 + b * obj2`` mixes. Each term reads one layer's output ``Tensor[C, H, W]`` of one
image. Objectives are plain frozen data, so they serialise into cache keys
(:meth:`Objective.describe`) and parse back from text (:func:`parse_objective`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from convscope.errors import InvalidParameterError

TermKind = Literal["channel", "neuron", "layer"]
TERM_KINDS: tuple[str, ...] = ("channel", "neuron", "layer")


@dataclass(frozen=True)
class Term:
    """``weight`` times one quantity of ``layer``'s output.

    - ``channel``: mean of channel ``channel`` over all positions;
    - ``neuron``: channel ``channel`` at the centre position (``H // 2, W // 2``);
    - ``layer``: mean of squares of the whole output (DeepDream's L2 objective).
    """

    layer: str
    kind: TermKind = "channel"
    channel: int | None = None
    weight: float = 1.0

    def value(self, act: torch.Tensor) -> torch.Tensor:
        """Scalar for one image's output ``act``: ``Tensor[C, H, W]`` (or ``Tensor[F]``)."""
        if self.kind == "layer":
            return act.square().mean()
        channel = act[self.channel]
        if self.kind == "neuron" and channel.dim() == 2:
            return channel[channel.shape[0] // 2, channel.shape[1] // 2]
        return channel.mean()

    def describe(self) -> str:
        body = self.layer if self.kind == "layer" else f"{self.layer}:{self.channel}"
        if self.kind == "neuron":
            body = f"neuron({body})"
        elif self.kind == "layer":
            body = f"layer({body})"
        return body if self.weight == 1.0 else f"{self.weight:g}*{body}"


@dataclass(frozen=True)
class Objective:
    """A weighted sum of terms, maximised by :func:`optimize.optimize_images`."""

    terms: tuple[Term, ...]

    @classmethod
    def channel(cls, layer: str, channel: int, weight: float = 1.0) -> Objective:
        return cls((Term(layer, "channel", channel, weight),))

    @classmethod
    def neuron(cls, layer: str, channel: int, weight: float = 1.0) -> Objective:
        return cls((Term(layer, "neuron", channel, weight),))

    @classmethod
    def layer(cls, layer: str, weight: float = 1.0) -> Objective:
        return cls((Term(layer, "layer", None, weight),))

    def __add__(self, other: Objective) -> Objective:
        return Objective(self.terms + other.terms)

    def __sub__(self, other: Objective) -> Objective:
        return self + (-other)

    def __neg__(self) -> Objective:
        return -1.0 * self

    def __mul__(self, factor: float) -> Objective:
        return Objective(
            tuple(Term(t.layer, t.kind, t.channel, t.weight * float(factor)) for t in self.terms)
        )

    __rmul__ = __mul__

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers this objective reads, each once, in first-use order."""
        return tuple(dict.fromkeys(t.layer for t in self.terms))

    def value(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scalar: the weighted sum over terms of one image's outputs ``acts[layer]``."""
        return sum(
            (t.weight * t.value(acts[t.layer]) for t in self.terms),
            start=torch.zeros((), device=next(iter(acts.values())).device),
        )

    def describe(self) -> str:
        """Canonical text, e.g. ``blocks.4:10 + -0.5*neuron(conv_head:3)``; parses back."""
        return " + ".join(t.describe() for t in self.terms)


_TERM = re.compile(
    r"^(?:(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*\*\s*)?"
    r"(?:(?P<kind>neuron|channel|layer)\((?P<inner>[^()]*)\)|(?P<bare>[^()*\s]+))$"
)
_NUMBER = re.compile(r"^-\s*(?:\d|\.\d)")


def parse_objective(text: str) -> Objective:
    """Parse ``"blocks.4:10"``, ``"-blocks.4:10"``, ``"layer(blocks.3)"``,
    ``"blocks.4:10 + 0.5*neuron(blocks.4:3) - blocks.4:7"`` into an :class:`Objective`.

    ``layer:channel`` is a channel term; a bare name without ``:`` is a whole-layer term.
    Terms are joined by `` + `` or `` - `` with spaces around. Raises
    :class:`InvalidParameterError` naming the accepted forms.
    """
    forms = (
        "expected terms like 'blocks.4:10', 'neuron(blocks.4:10)', 'layer(blocks.4)', "
        "optionally weighted ('0.5*blocks.4:10') and joined with ' + ' or ' - '"
    )
    parts = re.split(r"\s+([+-])\s+", text.strip())
    signs = [1.0] + [-1.0 if op == "-" else 1.0 for op in parts[1::2]]
    terms: list[Term] = []
    for sign, raw in zip(signs, parts[0::2], strict=True):
        piece = raw.strip()
        if piece.startswith("-") and not _NUMBER.match(piece):
            sign, piece = -sign, piece[1:].strip()
        match = _TERM.match(piece)
        if match is None:
            raise InvalidParameterError("objective", f"{forms}; got {text!r}")
        weight = sign * float(match["weight"] or 1.0)
        spec = (match["inner"] if match["kind"] else match["bare"]).strip()
        layer, colon, channel = spec.partition(":")
        kind = match["kind"] or ("channel" if colon else "layer")
        if kind == "layer":
            if colon:
                raise InvalidParameterError("objective", f"layer(...) takes no channel; {forms}")
            terms.append(Term(layer, "layer", None, weight))
        elif channel.strip().isdigit():
            terms.append(
                Term(layer, "neuron" if kind == "neuron" else "channel", int(channel), weight)
            )
        else:
            raise InvalidParameterError(
                "objective", f"{forms}; channel must be a non-negative integer, got {text!r}"
            )
    return Objective(tuple(terms))


def check_objective(objective: Objective, shapes: Mapping[str, Sequence[int]]) -> None:
    """Check channels against ``shapes[layer]`` (per-image output shape, e.g. ``[C, H, W]``).

    Raises :class:`InvalidParameterError` that names the valid range.
    """
    for term in objective.terms:
        shape = shapes[term.layer]
        if term.kind == "layer":
            continue
        count = shape[0]
        if term.channel is None or not 0 <= term.channel < count:
            raise InvalidParameterError(
                "channel",
                f"layer {term.layer!r} has {count} channels; expected 0 <= channel < {count}, "
                f"got {term.channel}",
            )
        if term.kind == "neuron" and len(shape) != 3:
            raise InvalidParameterError(
                "objective",
                f"neuron objectives need a spatial output [C, H, W]; layer {term.layer!r} "
                f"outputs {list(shape)}",
            )
