"""CNNs from ONNX files, converted to torch modules (onnx2torch) so hooks and gradients work.

A model folder (or an upload) may hold ``model.onnx`` instead of ``model.safetensors``, with
``"architecture": "onnx"`` in its manifest. The graph is read with ``onnx`` (protobuf, no
code runs), checked, lightly normalised (``Identity`` nodes that only rename a tensor are
bypassed: the legacy exporter writes one per folded weight), and converted by onnx2torch.

Layer names: onnx2torch names each module after its ONNX node (``/layer1/layer1.0/conv1/Conv``
becomes ``layer1/layer1/0/conv1/Conv``); here every character outside ``[A-Za-z0-9_]`` becomes
``_`` (``layer1_layer1_0_conv1_Conv``), so a name is a valid URL segment and still reads as the
node's name in Netron. :func:`node_names` maps each layer back to its ONNX node.

What onnx2torch cannot convert is refused with :class:`UnsupportedOperatorError` naming the
operator and its opset version.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import fx, nn

from convscope.errors import InvalidModelFileError, UnsupportedOperatorError

log = logging.getLogger(__name__)

MAX_OPSET = 17  # the newest default-domain opset onnx2torch 1.5 converts faithfully
_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")
_NOT_IMPLEMENTED = re.compile(r"operation_type='([^']+)', version=(\d+)")


@dataclass(frozen=True)
class OnnxInfo:
    """What the graph says about itself: input ``[C, H, W]`` (None where dynamic), the
    number of outputs of the first output (classes) and the opset."""

    input_shape: tuple[int | None, ...]
    num_outputs: int | None
    opset: int


def _proto(path: Path) -> Any:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...: the file's fault
        raise InvalidModelFileError(f"{path.name} is not a valid ONNX model: {exc}") from None
    if any(init.data_location == 1 for init in model.graph.initializer):  # EXTERNAL
        raise InvalidModelFileError(
            f"{path.name} keeps its weights in external data files; save it as one file "
            "(onnx.save(model, path, save_as_external_data=False))"
        )
    return model


def _dims(value: Any) -> tuple[int | None, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim
    )


def describe(path: Path) -> OnnxInfo:
    """Input shape, class count and opset of an ONNX file, without converting it."""
    model = _proto(path)
    initialisers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initialisers]
    if len(inputs) != 1:
        raise InvalidModelFileError(
            f"{path.name}: expected one input (an image batch), got {len(inputs)}"
        )
    shape = _dims(inputs[0])
    if len(shape) != 4:
        raise InvalidModelFileError(
            f"{path.name}: expected an input [N, C, H, W], got {len(shape)} dimensions"
        )
    out = _dims(model.graph.output[0])
    return OnnxInfo(shape[1:], out[-1] if out else None, _opset(model))


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _bypass_identities(model: Any) -> None:
    """Route consumers of ``Identity`` nodes to their inputs (graph outputs keep theirs)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    if not alias:
        return

    def source(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = source(name)
    del graph.node[:]
    graph.node.extend(kept)


def layer_name(node_name: str) -> str:
    """An onnx2torch module name -> a convscope layer name (``[A-Za-z0-9_]``, see above)."""
    return _UNSAFE.sub("_", node_name).strip("_") or "node"


def _rename_modules(module: fx.GraphModule) -> dict[str, str]:
    """Give every called submodule a URL-safe name; returns new name -> old name."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for node in module.graph.nodes:
        if node.op != "call_module":
            continue
        old = str(node.target)
        new = layer_name(old)
        base, n = new, 1
        while new in taken:
            n += 1
            new = f"{base}_{n}"
        taken.add(new)
        names[new] = old
        if new != old:
            module.add_submodule(new, module.get_submodule(old))
            node.target = new
    module.delete_all_unused_submodules()
    module.recompile()
    return names


def load_onnx(path: Path) -> tuple[nn.Module, dict[str, str]]:
    """Convert an ONNX CNN to a torch module; returns it and layer name -> ONNX node name.

    Raises ``UnsupportedOperatorError`` (an operator onnx2torch cannot convert, or an opset
    above :data:`MAX_OPSET`) or ``InvalidModelFileError`` (not a valid ONNX file).
    """
    from onnx2torch import convert

    model = _proto(path)
    opset = _opset(model)
    if opset > MAX_OPSET:
        raise UnsupportedOperatorError(
            f"opset {opset}",
            f"{path.name} uses ONNX opset {opset}; convscope converts opsets up to "
            f"{MAX_OPSET}: export with torch.onnx.export(model, x, path, dynamo=False, "
            f"opset_version={MAX_OPSET})",
        )
    _bypass_identities(model)
    try:
        module = convert(model)
    except NotImplementedError as exc:
        found = _NOT_IMPLEMENTED.search(str(exc))
        operator = f"{found.group(1)} (opset {found.group(2)})" if found else str(exc)
        raise UnsupportedOperatorError(
            operator,
            f"{path.name}: the ONNX operator {operator} cannot be converted to PyTorch "
            f"(onnx2torch: {exc})",
        ) from None
    except Exception as exc:  # a converter that fails on this graph's particular attributes
        raise InvalidModelFileError(f"{path.name}: cannot convert the ONNX graph: {exc}") from None
    names = _rename_modules(module)
    by_layer = {layer_name(str(node.name)): str(node.name) for node in model.graph.node}
    mapping = {new: by_layer.get(layer_name(old), old) for new, old in names.items()}
    log.info("converted %s: %d modules", path.name, len(mapping))
    return module, mapping
