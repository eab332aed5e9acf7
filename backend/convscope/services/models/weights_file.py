"""The one check of a ``.safetensors`` weights file against an architecture, and its load.

Used for uploaded models (``uploads.ModelStore.add``) and for operator models in the models
folder (``sources.user_spec``), in this order, each step before the next costs anything:

1. size bounds before any read: at least 8 bytes, a header length that fits the file and
   ``MAX_HEADER_BYTES``; a pickle (``.pt``/``.pth``/``.bin``) fails here as bytes;
2. the header parsed by the safetensors library itself (``safe_open``: Rust, JSON with a
   nesting limit, offsets checked to cover the file exactly; it never unpickles);
3. the architecture built on the ``meta`` device (shapes, no storage) and its parameter count
   bounded (``CONVSCOPE_MAX_MODEL_PARAMETERS``);
4. keys, shapes and dtype kinds compared in :func:`match_keys`; a common prefix
   (``model.``, ``module.``, ``_orig_mod.``) is stripped when that makes the keys match, and
   reported; otherwise the error names the likely prefix;
5. only then the real build, a tensor-by-tensor read (every float finite) and a strict load.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from convscope.errors import InvalidModelFileError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024**2
PREFIXES = ("module.", "_orig_mod.", "model.")
# safetensors dtype -> kind; the kind must match the architecture's tensor.
KINDS: dict[str, str] = {
    "F64": "float",
    "F32": "float",
    "F16": "float",
    "BF16": "float",
    "I64": "int",
    "I32": "int",
    "I16": "int",
    "I8": "int",
    "U8": "int",
    "BOOL": "bool",
}
PICKLE_HINT = (
    "pickled checkpoints (.pt, .pth, .bin) are never accepted; convert them with "
    "safetensors.torch.save_file"
)


@dataclass(frozen=True)
class Entry:
    """One tensor of a weights file: its safetensors dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Match:
    """How a file's keys map onto an architecture's: ``prefix`` stripped from every key."""

    prefix: str = ""
    notes: list[str] = field(default_factory=list)


def read_header(path: Path, *, max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, Entry]:
    """The tensor table of a ``.safetensors`` file, parsed by the safetensors library.

    Raises ``InvalidModelFileError`` for anything that is not a well-formed safetensors file:
    too short, a header length that does not fit (a pickle or zip), invalid or too deeply
    nested JSON, offsets that do not cover the file (truncated), unknown dtypes.
    """
    from safetensors import SafetensorError, safe_open

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise InvalidModelFileError(f"weights file {path.name} cannot be read: {exc}") from exc
    if len(head) < 9:
        raise InvalidModelFileError(
            f"weights file is {size} bytes: not a .safetensors file; {PICKLE_HINT}"
        )
    (length,) = struct.unpack("<Q", head[:8])
    if length < 2 or length > min(max_header_bytes, size - 8) or head[8:9] != b"{":
        raise InvalidModelFileError(
            "weights file is not a .safetensors file: its first 8 bytes do not give a header "
            f"length that fits the file and the limit of {max_header_bytes} bytes (got "
            f"{length}), or the header is not a JSON object; {PICKLE_HINT}"
        )
    entries: dict[str, Entry] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not iterable
                part = f.get_slice(key)
                entries[key] = Entry(str(part.get_dtype()), tuple(part.get_shape()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InvalidModelFileError(
            f"weights file is not a valid .safetensors file (truncated upload?): {str(exc)[:300]}"
        ) from None
    for key, entry in entries.items():
        if entry.dtype not in KINDS:
            raise InvalidModelFileError(
                f"weights file entry {key[:100]!r} has dtype {entry.dtype}; expected one of "
                f"{', '.join(KINDS)}"
            )
    return entries


def kind(tensor: torch.Tensor) -> str:
    if tensor.is_floating_point():
        return "float"
    return "bool" if tensor.dtype == torch.bool else "int"


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the ``meta`` device: every shape, no storage (a huge one costs nothing)."""
    try:
        with torch.device("meta"):
            return build()
    except InvalidModelFileError:
        raise
    except Exception as exc:  # an architecture whose constructor needs real tensors
        raise InvalidModelFileError(
            f"the architecture cannot be built without weights to check it: {exc}"
        ) from exc


def count_parameters(model: nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


def check_size(model: nn.Module, max_parameters: int, what: str) -> int:
    """The parameter count of (a meta) ``model``; ``InvalidModelFileError`` above the bound."""
    count = count_parameters(model)
    if count > max_parameters:
        raise InvalidModelFileError(
            f"{what} has {count} parameters; the limit is {max_parameters} "
            "(CONVSCOPE_MAX_MODEL_PARAMETERS)",
            parameters=count,
        )
    return count


def _common_prefix(keys: list[str]) -> str | None:
    """The first dotted component shared by every key (``'backbone.'``), if any."""
    if not keys:
        return None
    first = keys[0].split(".", 1)[0] + "."
    return first if all(k.startswith(first) for k in keys) and len(first) > 1 else None


def match_keys(
    expected: Mapping[str, torch.Tensor], header: Mapping[str, Entry], what: str
) -> Match:
    """Compare keys, shapes and dtype kinds; the one place they are compared.

    When the keys only match after stripping a known prefix (``module.`` from
    ``DataParallel``, ``_orig_mod.`` from ``torch.compile``, ``model.`` from Lightning) from
    every key, returns that prefix. Raises ``InvalidModelFileError`` with ``missing``,
    ``unexpected`` and ``mismatched`` lists otherwise.
    """
    keys = list(header)
    prefix = ""
    if set(keys) != set(expected):
        stripped = keys
        for _ in range(len(PREFIXES)):  # module._orig_mod.: strip nested wrappers too
            lead = next(
                (p for p in PREFIXES if stripped and all(k.startswith(p) for k in stripped)), None
            )
            if lead is None:
                break
            stripped = [k[len(lead) :] for k in stripped]
            if set(stripped) == set(expected):
                prefix = keys[0][: len(keys[0]) - len(stripped[0])]
                break
    rename = {k: k[len(prefix) :] for k in keys}
    renamed = {rename[k]: v for k, v in header.items()}
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    problems = []
    for key in sorted(set(expected) & set(renamed)):
        want, got = expected[key], renamed[key]
        if tuple(want.shape) != got.shape:
            problems.append(f"{key}: expected shape {list(want.shape)}, got {list(got.shape)}")
        if KINDS[got.dtype] != kind(want):
            problems.append(f"{key}: expected a {kind(want)} tensor, got {got.dtype}")
    if missing or unexpected or problems:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if problems:
            parts.append("; ".join(problems[:5]))
        likely = _common_prefix(keys)
        if likely and missing and not _common_prefix(list(expected)):
            parts.append(
                f"every key in the file starts with {likely!r}: strip that prefix "
                f"(the architecture's keys look like {sorted(expected)[:2]})"
            )
        raise InvalidModelFileError(
            f"weights do not fit {what}: " + ", ".join(parts),
            missing=missing[:100],
            unexpected=unexpected[:100],
            mismatched=problems[:100],
        )
    notes = [f"stripped the key prefix {prefix!r}"] if prefix else []
    return Match(prefix, notes)


def check(
    path: Path, build: Callable[[], nn.Module], *, max_parameters: int, what: str
) -> tuple[Match, int]:
    """Steps 1-4 of the module docstring: no real tensor is allocated. Returns the key match
    and the parameter count."""
    header = read_header(path)
    meta = build_on_meta(build)
    count = check_size(meta, max_parameters, what)
    return match_keys(meta.state_dict(), header, what), count


def load(model: nn.Module, path: Path, match: Match) -> None:
    """Read every tensor (float ones must be finite) and load them strictly into ``model``."""
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not iterable
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise InvalidModelFileError(
                        f"{path.name}: tensor {key[:100]!r} holds NaN or Inf values"
                    )
                state[key[len(match.prefix) :]] = tensor
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidModelFileError(
            f"{path.name} is not a readable .safetensors file: {exc}"
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # the file changed since the check
        raise InvalidModelFileError(f"{path.name} does not fit the architecture: {exc}") from exc


def load_checked(
    path: Path, build: Callable[[], nn.Module], *, max_parameters: int, what: str
) -> tuple[nn.Module, Match]:
    """Check ``path`` against ``build``'s architecture (on ``meta``), then build and load it."""
    match, _ = check(path, build, max_parameters=max_parameters, what=what)
    model = build()
    load(model, path, match)
    if match.prefix:
        log.info("%s: %s", what, "; ".join(match.notes))
    return model, match
