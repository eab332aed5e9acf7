"""Two checkpoints of one architecture, layer by layer: weights, and activations on an image.

- ``weight_change``: ``||W_b - W_a|| / ||W_a||`` over a module's own parameters and float
  buffers (batch-norm statistics included: fine-tuning moves them too).
- ``filter_cosine``: mean cosine similarity of matching filters (rows of ``weight`` flattened
  to ``[O, -1]``; two all-zero filters count as 1), for weights of two or more dimensions.
- ``cka``: linear CKA (Kornblith et al. 2019) between the two models' outputs of a module on
  one image, spatial positions as examples, channels as features (None when the output has
  fewer than two positions).
- ``activation_change``: per channel, ``||Y_c - X_c|| / ||X_c||`` (0 when ``X_c`` is zero and
  ``Y_c`` too); its mean and max are reported per module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convscope.errors import ArchitectureMismatchError
from convscope.services.models.hooks import HookScope, eval_mode

UNCHANGED = 1e-6  # relative changes at or below this count as none


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    tensors = {k: p.detach() for k, p in module.named_parameters(recurse=False)}
    tensors.update(
        {
            k: b.detach()
            for k, b in module.named_buffers(recurse=False)
            if b is not None and b.is_floating_point()
        }
    )
    return tensors


def check_same_architecture(
    a_name: str, a: nn.Module, b_name: str, b: nn.Module
) -> list[tuple[str, nn.Module, nn.Module]]:
    """Pair the modules of ``a`` and ``b`` by name; the first difference raises (422).

    A difference is a missing or extra module, another type, or a parameter or buffer of
    another name or shape.
    """
    mods_a, mods_b = list(a.named_modules()), list(b.named_modules())
    pairs = []
    for i in range(max(len(mods_a), len(mods_b))):
        if i >= len(mods_a) or i >= len(mods_b):
            name = (mods_a if i < len(mods_a) else mods_b)[i][0]
            side = a_name if i < len(mods_a) else b_name
            raise ArchitectureMismatchError(a_name, b_name, name, f"only {side!r} has it")
        (name_a, ma), (name_b, mb) = mods_a[i], mods_b[i]
        layer = name_a or "output"
        if name_a != name_b:
            raise ArchitectureMismatchError(
                a_name, b_name, layer, f"{a_name!r} has {name_a!r} where {b_name!r} has {name_b!r}"
            )
        if type(ma) is not type(mb) and name_a:  # the root's class may differ (a wrapper)
            raise ArchitectureMismatchError(
                a_name, b_name, layer, f"{type(ma).__name__} vs {type(mb).__name__}"
            )
        ta, tb = _own_tensors(ma), _own_tensors(mb)
        shapes_a = {k: tuple(v.shape) for k, v in ta.items()}
        shapes_b = {k: tuple(v.shape) for k, v in tb.items()}
        if shapes_a != shapes_b:
            raise ArchitectureMismatchError(
                a_name, b_name, layer, f"parameter shapes {shapes_a} vs {shapes_b}"
            )
        pairs.append((layer, ma, mb))
    return pairs


def weight_rows(pairs: Iterable[tuple[str, nn.Module, nn.Module]]) -> dict[str, dict[str, Any]]:
    """Per module with own weights: ``weight_change``, ``filter_cosine`` (or None), ``params``."""
    rows: dict[str, dict[str, Any]] = {}
    for name, ma, mb in pairs:
        ta, tb = _own_tensors(ma), _own_tensors(mb)
        if not ta:
            continue
        diff = sum(float((tb[k].double() - ta[k].double()).square().sum()) for k in ta)
        base = sum(float(ta[k].double().square().sum()) for k in ta)
        change = (diff**0.5) / base**0.5 if base > 0 else (0.0 if diff == 0 else float("inf"))
        cosine = None
        weight = ta.get("weight")
        if weight is not None and weight.dim() >= 2:
            wa = weight.double().flatten(1)
            wb = tb["weight"].double().flatten(1)
            cos = torch.nn.functional.cosine_similarity(wa, wb, dim=1, eps=1e-12)
            # Two all-zero filters (pruned, dead) are the same filter.
            both_zero = (wa.abs().sum(1) == 0) & (wb.abs().sum(1) == 0)
            cosine = float(torch.where(both_zero, 1.0, cos).mean())
        rows[name] = {
            "weight_change": change,
            "filter_cosine": cosine,
            "params": sum(t.numel() for t in ta.values()),
        }
    return rows


def capture_all(module: nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every module's first output for ``Tensor[1, 3, H, W]`` (copies, float32, batch dropped),
    and the module names in the order they finished.

    Modules handing on the same tensor (a block returning its last layer's output, an
    ``Identity``) share one copy, so callers can compute once per distinct tensor.
    """
    outputs: dict[str, torch.Tensor] = {}
    order: list[str] = []
    copies: dict[tuple[int, int, tuple[int, ...]], torch.Tensor] = {}
    alive: list[torch.Tensor] = []  # keeps addresses unique while the forward runs

    def hook_for(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_m: nn.Module, _inputs: Any, output: Any) -> None:
            if name in outputs or not isinstance(output, torch.Tensor) or output.dim() < 2:
                return
            key = (output.data_ptr(), output._version, tuple(output.shape))
            if key not in copies:
                copies[key] = output[0].detach().to("cpu", torch.float32, copy=True)
                alive.append(output)
            outputs[name] = copies[key]
            order.append(name)

        return hook

    with HookScope() as scope:
        for name, sub in module.named_modules():
            scope.forward(sub, hook_for(name or "output"))
        with eval_mode(module), torch.no_grad():
            module(x)
    return outputs, order


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Linear CKA of ``Tensor[N, P]`` and ``Tensor[N, Q]`` (examples in rows); None if N < 2.

    Gram matrices in float32 (the large products), their norms and ratio in float64.
    """
    if x.shape[0] < 2:
        return None
    x = x.float() - x.float().mean(0, keepdim=True)
    y = y.float() - y.float().mean(0, keepdim=True)
    if x.shape[0] <= max(x.shape[1], y.shape[1]):  # N x N Gram matrices are the smaller ones
        kx, ky = (x @ x.T).double(), (y @ y.T).double()
        hsic, nx, ny = (kx * ky).sum(), kx.norm(), ky.norm()
    else:
        hsic = (y.T @ x).double().square().sum()
        nx, ny = (x.T @ x).double().norm(), (y.T @ y).double().norm()
    if nx == 0 or ny == 0:
        return 1.0 if nx == ny else 0.0  # both constant: the same (lack of) representation
    return float(hsic / (nx * ny))


def activation_row(xa: torch.Tensor, xb: torch.Tensor) -> dict[str, Any]:
    """CKA and per-channel relative change of one module's outputs (``[C, H, W]`` or ``[F]``).

    Equal outputs are the same representation: CKA 1 and no change, without arithmetic.
    """
    if xa.dim() == 1:
        xa, xb = xa[:, None, None], xb[:, None, None]
    flat_a, flat_b = xa.flatten(1), xb.flatten(1)
    if torch.equal(flat_a, flat_b):
        zeros = [0.0] * flat_a.shape[0]
        return {
            "cka": 1.0 if flat_a.shape[1] >= 2 else None,
            "activation_change": 0.0,
            "activation_change_max": 0.0,
            "channel_change": zeros,
        }
    base = flat_a.double().norm(dim=1)
    diff = (flat_b - flat_a).double().norm(dim=1)
    change = torch.where(base > 0, diff / base.clamp_min(1e-300), (diff > 0).double())
    return {
        "cka": linear_cka(flat_a.T, flat_b.T),
        "activation_change": float(change.mean()),
        "activation_change_max": float(change.max()),
        "channel_change": [round(v, 6) for v in change.tolist()],
    }


@dataclass(frozen=True)
class Comparison:
    """Rows in the layer table's order, and the first module that differs."""

    rows: list[dict[str, Any]]
    first_weight_change: str | None
    first_activation_change: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "layers": self.rows,
            "first_weight_change": self.first_weight_change,
            "first_activation_change": self.first_activation_change,
        }


def compare(
    pairs: list[tuple[str, nn.Module, nn.Module]],
    layer_order: list[str],
    x: torch.Tensor | None,
    model_a: nn.Module,
    model_b: nn.Module,
) -> Comparison:
    """Weights (and, with ``x`` = ``Tensor[1, 3, H, W]``, activations) of two paired models.

    ``layer_order``: module names in the layer table's (forward) order. The first activation
    change is the first module, in the order modules *finished*, whose output changed: a block
    finishes after the layer inside it that changed.
    """
    weights = weight_rows(pairs)
    acts: dict[str, dict[str, Any]] = {}
    first_act = None
    if x is not None:
        outs_a, finished = capture_all(model_a, x)
        outs_b, _ = capture_all(model_b, x)
        done: dict[tuple[int, int], dict[str, Any]] = {}
        for name in finished:
            if name not in outs_b or outs_a[name].shape != outs_b[name].shape:
                continue
            key = (id(outs_a[name]), id(outs_b[name]))
            if key not in done:
                done[key] = activation_row(outs_a[name], outs_b[name])
            acts[name] = done[key]
            if first_act is None and acts[name]["activation_change_max"] > UNCHANGED:
                first_act = name
    rows = []
    first_weight = None
    for name in layer_order:
        if name not in weights and name not in acts:
            continue
        row: dict[str, Any] = {"layer": name, **weights.get(name, {})}
        row.update(acts.get(name, {}))
        if first_weight is None and weights.get(name, {}).get("weight_change", 0.0) > UNCHANGED:
            first_weight = name
        rows.append(row)
    return Comparison(rows, first_weight, first_act)
