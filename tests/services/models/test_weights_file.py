"""The one weights-file check: hostile headers, pickles, truncation, prefixes, the meta bound."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from convscope.errors import InvalidModelFileError
from convscope.services.models import weights_file
from convscope.services.models.sources import build_architecture


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def state(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.contiguous() for k, v in model.state_dict().items()}


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def raw_header(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_a_matching_file_loads_the_exact_tensors(tmp_path: Path) -> None:
    reference = small()
    path = write(tmp_path / "m.safetensors", state(reference))
    model, match = weights_file.load_checked(path, small, max_parameters=10_000, what="small")
    assert match.prefix == "" and match.notes == []
    for key, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "module._orig_mod."])
def test_a_known_prefix_is_stripped_and_reported(tmp_path: Path, prefix: str) -> None:
    reference = small()
    path = write(tmp_path / "m.safetensors", state(reference, prefix))
    model, match = weights_file.load_checked(path, small, max_parameters=10_000, what="small")
    assert match.prefix == prefix
    assert match.notes == [f"stripped the key prefix {prefix!r}"]
    assert torch.equal(model.state_dict()["3.weight"], reference.state_dict()["3.weight"])


def test_an_unknown_prefix_is_named_in_the_error(tmp_path: Path) -> None:
    path = write(tmp_path / "m.safetensors", state(small(), "backbone."))
    with pytest.raises(InvalidModelFileError) as info:
        weights_file.load_checked(path, small, max_parameters=10_000, what="small")
    assert "starts with 'backbone.'" in info.value.detail
    assert info.value.extra["missing"][0] == "0.bias"
    assert info.value.extra["unexpected"][0] == "backbone.0.bias"


def test_a_prefix_on_only_some_keys_is_not_stripped(tmp_path: Path) -> None:
    tensors = state(small())
    tensors["module.extra"] = torch.zeros(1)
    path = write(tmp_path / "m.safetensors", tensors)
    with pytest.raises(InvalidModelFileError) as info:
        weights_file.load_checked(path, small, max_parameters=10_000, what="small")
    assert info.value.extra["unexpected"] == ["module.extra"]


def test_shapes_and_dtype_kinds_are_compared(tmp_path: Path) -> None:
    tensors = state(small())
    tensors["3.weight"] = torch.zeros(3, 4)
    tensors["1.num_batches_tracked"] = torch.zeros((), dtype=torch.float32)
    path = write(tmp_path / "m.safetensors", tensors)
    with pytest.raises(InvalidModelFileError) as info:
        weights_file.load_checked(path, small, max_parameters=10_000, what="small")
    mismatched = info.value.extra["mismatched"]
    assert "1.num_batches_tracked: expected a int tensor, got F32" in mismatched
    assert "3.weight: expected shape [2, 4], got [3, 4]" in mismatched


def test_non_finite_values_are_refused(tmp_path: Path) -> None:
    tensors = state(small())
    tensors["0.weight"][0, 0, 0, 0] = float("nan")
    path = write(tmp_path / "m.safetensors", tensors)
    with pytest.raises(InvalidModelFileError, match="NaN or Inf"):
        weights_file.load_checked(path, small, max_parameters=10_000, what="small")


class Sentinel:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({self.path!r}, 'w').write('executed')",))


def test_pickles_are_refused_as_bytes_and_never_executed(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    for name, data in (
        ("raw", pickle.dumps({"x": Sentinel(sentinel)}, protocol=2)),
        ("zip", _torch_save({"x": Sentinel(sentinel)})),
    ):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(InvalidModelFileError, match="never accepted"):
            weights_file.read_header(path)
    assert not sentinel.exists()


def _torch_save(obj: object) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "header, data, message",
    [
        (b"", b"", "never accepted"),  # too short
        (b"[1, 2]", b"", "never accepted"),  # not an object
        (b"{not json}", b"", "not a valid .safetensors"),
        (
            json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(),
            b"\0" * 8,  # truncated: 8 of 16 bytes
            "not a valid .safetensors",
        ),
        (
            json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode(),
            b"\0" * 8,  # offsets disagree with the shape
            "not a valid .safetensors",
        ),
        (
            json.dumps({"a": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}).encode(),
            b"\0" * 4,
            "not a valid .safetensors",
        ),
        (b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}", b"", "not a valid .safetensors"),
    ],
    ids=["short", "array", "not-json", "truncated", "offsets", "dtype", "deep-nesting"],
)
def test_malformed_headers_are_refused(
    tmp_path: Path, header: bytes, data: bytes, message: str
) -> None:
    path = raw_header(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(InvalidModelFileError, match=message):
        weights_file.read_header(path)


def test_a_header_length_past_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    header = json.dumps({"__metadata__": {"pad": "x" * 2000}}).encode()
    path = raw_header(tmp_path / "big.safetensors", header)
    assert weights_file.read_header(path) == {}
    with pytest.raises(InvalidModelFileError, match="limit of 1000 bytes"):
        weights_file.read_header(path, max_header_bytes=1000)


META_PROBE = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
from convscope.errors import InvalidModelFileError
from convscope.services.models import weights_file
from convscope.services.models.sources import build_architecture
path = Path(sys.argv[1])
save_file({"x": torch.zeros(1)}, str(path))
try:
    weights_file.check(path, lambda: build_architecture("torchvision/vgg16", 100_000),
                       max_parameters=200_000_000, what="vgg16")
except InvalidModelFileError as exc:
    # VmHWM: this process's own peak (ru_maxrss may keep the forking parent's across exec)
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM"))
    print(exc.extra["parameters"], peak // 1024)
"""


def test_the_parameter_bound_is_checked_on_meta_before_any_allocation(tmp_path: Path) -> None:
    """vgg16 with 100 000 classes: 0.54 G parameters, 2.2 GB if built; refused at ~no cost.

    In a fresh process, so that its peak resident size is this check's alone."""
    done = subprocess.run(
        [sys.executable, "-c", META_PROBE, str(tmp_path / "tiny.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    parameters, peak_mib = map(int, done.stdout.split())
    # vgg16's 138 357 544 parameters with 1000 classes, the last layer (4096 + 1 per class)
    # counted for 100 000 classes instead:
    assert parameters == 138_357_544 + (100_000 - 1000) * 4097
    assert peak_mib < 1200, f"peak RSS {peak_mib} MiB: real weights were allocated"


def test_meta_build_matches_a_real_build(tmp_path: Path) -> None:
    real = build_architecture("torchvision/squeezenet1_1", 3)
    path = write(tmp_path / "sq.safetensors", state(real))
    match, count = weights_file.check(
        path,
        lambda: build_architecture("torchvision/squeezenet1_1", 3),
        max_parameters=10**9,
        what="squeezenet",
    )
    assert match.prefix == ""
    assert count == sum(t.numel() for t in real.state_dict().values())
