"""The index: examples against brute force, merge against one pass, incremental against full,
and a cancelled or broken build leaving the served index alone."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from convscope.errors import (
    CancelledError,
    EmptyCollectionError,
    NotSpatialLayerError,
    UnknownCollectionError,
)
from convscope.services.collections import indexfiles
from convscope.services.collections.index import (
    LayerPartial,
    Partial,
    empty,
    merge,
    merge_all,
)
from convscope.services.collections.stream import reduce_maps
from convscope.services.facade import Convscope
from tests.services.collections.conftest import DEFAULT, LAYERS, new_collection


def _assert_layer_equal(a: LayerPartial, b: LayerPartial, exact_sums: bool = False) -> None:
    for top_a, top_b in ((a.top_max, b.top_max), (a.top_mean, b.top_mean)):
        np.testing.assert_array_equal(top_a.score, top_b.score)
        np.testing.assert_array_equal(top_a.image, top_b.image)
        np.testing.assert_array_equal(top_a.pos, top_b.pos)
    assert a.count == b.count
    np.testing.assert_array_equal(a.max, b.max)
    np.testing.assert_array_equal(a.nonpos, b.nonpos)
    np.testing.assert_array_equal(a.hist, b.hist)
    for name in ("total", "total_sq", "mean_sum", "mean_sq"):
        if exact_sums:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        else:
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-9)


def _assert_equal(a: Partial, b: Partial) -> None:
    assert a.k == b.k and a.layers.keys() == b.layers.keys()
    for name in a.layers:
        _assert_layer_equal(a.layers[name], b.layers[name])


def test_merge_of_partials_equals_one_pass() -> None:
    rng = torch.Generator().manual_seed(0)
    maps = torch.randn(20, 6, 5, 7, generator=rng)
    maps[3] = maps[11]  # exact ties: broken by the lower image position
    maps[:, 2] = maps[:, 2].clamp(max=0)  # a dead channel
    k = 4
    one, _ = reduce_maps({"a": maps}, 0, k)
    parts = [reduce_maps({"a": maps[i : i + 3]}, i, k)[0] for i in range(0, 20, 3)]
    shapes = {"a": (6, 5, 7)}
    left = empty(shapes, k)
    for part in parts:
        left = merge(left, part)
    right = empty(shapes, k)
    for part in reversed(parts):
        right = merge(part, right)
    tree = merge(merge(parts[0], merge(parts[1], parts[2])), merge(merge(*parts[3:5]), parts[5]))
    tree = merge(tree, parts[6])
    at_once = merge_all(parts)  # one selection over every part, as the build does
    at_once_shuffled = merge_all([parts[i] for i in (4, 0, 6, 2, 5, 1, 3)])
    for merged in (left, right, tree, at_once, at_once_shuffled):
        _assert_equal(merged, one)
    # a layer that shares its partial with another (one tensor, two modules) stays shared
    shared = [Partial(k, {"a": part.layers["a"], "b": part.layers["a"]}) for part in parts]
    combined = merge_all(shared)
    assert combined.layers["a"] is combined.layers["b"]
    _assert_layer_equal(combined.layers["a"], one.layers["a"])
    # and the one-pass values are what they claim to be
    layer = one.layers["a"]
    flat = maps.flatten(2)
    expected = flat.amax(2).T.numpy()  # [C, N]
    for c in range(6):
        order = sorted(range(20), key=lambda i: (-expected[c, i], i))[:k]
        assert layer.top_max.image[c].tolist() == order
        assert layer.top_max.pos[c].tolist() == flat[order, c].argmax(1).tolist()
    assert layer.max[2] <= 0 and (layer.max[[0, 1, 3, 4, 5]] > 0).all()
    # per-image sums are float32 (as the forward), accumulated in float64: the error is
    # float32 rounding of the magnitudes summed, whatever cancellation leaves of the sum
    magnitude = flat.double().abs().sum((0, 2)).numpy()
    exact = flat.double().sum((0, 2)).numpy()
    assert (np.abs(layer.total - exact) <= 1e-5 * magnitude).all()
    squares = flat.double().square().sum((0, 2)).numpy()
    np.testing.assert_allclose(layer.total_sq, squares, rtol=1e-5)
    assert layer.nonpos.tolist() == (flat <= 0).sum((0, 2)).tolist()
    assert layer.hist.sum(1).tolist() == [20] * 6


def _brute_force(model, images: list[torch.Tensor], layers: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """Each image forwarded on its own with plain forward hooks: per layer, the spatial
    max ``[N, C]`` and its flat argmax ``[N, C]``."""
    named = dict(model.module.named_modules())
    kept: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = [
        named[layer].register_forward_hook(
            lambda _m, _i, out, layer=layer: kept[layer].append(out[0].flatten(1).clone())
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            for x in images:
                model.module(x[None])
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for layer, maps in kept.items():
        stacked = torch.stack(maps)  # [N, C, H*W]
        peak, where = stacked.max(2)
        out[layer] = (peak.numpy(), where.numpy())
    return out


def test_examples_equal_brute_force(service: Convscope, indexed: str) -> None:
    from PIL import Image

    model = service.model(DEFAULT)
    ids = service.collection(indexed)["images"]
    images = []
    for image_id in ids:
        _, data = service.image(image_id)
        images.append(model.spec.preprocessing(Image.open(io.BytesIO(data)).convert("RGB")))
    brute = _brute_force(model, images, LAYERS)
    for layer in LAYERS:
        peak, where = brute[layer]
        width = model.layer(layer).output_shape[2]
        for channel in (0, 5, 13):
            scores = peak[:, channel]
            ranked = sorted(range(len(ids)), key=lambda i: -scores[i])[:8]
            rendered = service.dataset_examples(DEFAULT, indexed, layer, channel, 8, "max", "json")
            found = json.loads(rendered.content)
            assert len(found) == 8
            got = [e["score"] for e in found]
            np.testing.assert_allclose(got, scores[ranked], rtol=1e-4, atol=1e-4)
            for rank, entry in enumerate(found):
                # The same image and position wherever the ranking is not a near-tie.
                i = ranked[rank]
                gaps = [abs(scores[i] - scores[j]) for j in range(len(ids)) if j != i]
                if min(gaps) > 1e-3:
                    assert entry["image_id"] == ids[i], (layer, channel, rank)
                    assert (entry["y"], entry["x"]) == divmod(int(where[i, channel]), width)
                top, left, bottom, right = entry["box"]
                assert 0 <= top < bottom <= 224 and 0 <= left < right <= 224


def test_incremental_index_equals_full_rebuild(
    service: Convscope, photos: list[tuple[str, bytes]]
) -> None:
    layers = ("conv_stem", "blocks.3")
    cid_inc = new_collection(service, photos[:10], "incremental")
    first = service.index_now(DEFAULT, cid_inc, layers, 5)
    assert first["new"] == 10 and not first["incremental"]
    service.add_to_collection(cid_inc, [(n, io.BytesIO(d)) for n, d in photos[10:16]])  # type: ignore[misc]
    second = service.index_now(DEFAULT, cid_inc, layers, 5)
    assert second["incremental"] and second["new"] == 6 and second["images"] == 16
    again = service.index_now(DEFAULT, cid_inc, layers, 5)
    assert again["new"] == 0

    cid_full = new_collection(service, photos[:16], "full")
    service.index_now(DEFAULT, cid_full, layers, 5)
    model = service.model(DEFAULT)
    inc = service.collections.reader(model, cid_inc)
    full = service.collections.reader(model, cid_full)
    assert inc.images == full.images
    _assert_equal(inc.partial(), full.partial())
    for layer in layers:
        np.testing.assert_array_equal(inc.scores(layer)[:16], full.scores(layer)[:16])


def test_cancelled_index_leaves_the_old_one_served(
    service: Convscope, photos: list[tuple[str, bytes]]
) -> None:
    cid = new_collection(service, photos[:6], "cancel")
    service.index_now(DEFAULT, cid, ("blocks.1",), 4)
    model = service.model(DEFAULT)
    before = service.collections.reader(model, cid)
    old_examples = service.dataset_examples(DEFAULT, cid, "blocks.1", 2, 4, "max", "json").content
    service.add_to_collection(cid, [(n, io.BytesIO(d)) for n, d in photos[6:20]])  # type: ignore[misc]

    def cancel(step: int, total: int) -> None:
        raise CancelledError(f"cancelled at {step} of {total}")

    with pytest.raises(CancelledError):
        service.collections.build(model, cid, ["blocks.1"], 4, cancel, batch_size=4)
    after = service.collections.reader(model, cid)
    assert after.folder == before.folder and after.manifest["images"] == before.images
    base = before.folder.parent
    assert sorted(p.name for p in base.glob("gen-*")) == [before.folder.name]  # staging gone
    assert service.dataset_examples(DEFAULT, cid, "blocks.1", 2, 4, "max", "json").content == (
        old_examples
    )


def test_cancel_through_the_job_api(service: Convscope, photos: list[tuple[str, bytes]]) -> None:
    cid = new_collection(service, photos[:20], "job-cancel")
    job = service.index_collection(DEFAULT, cid, ("blocks.1",), 4)
    service.cancel_job(job.id)
    import time

    deadline = time.monotonic() + 120
    while service.job(job.id).state not in ("cancelled", "done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    state = service.job(job.id).state
    base = service.collections._base(cid, service.model(DEFAULT))
    if state == "cancelled":  # nothing served, no staging left behind
        assert indexfiles.read_current(base) is None
        assert list(base.glob("gen-*")) == []
    else:  # it finished before the cancel arrived
        assert state == "done"


def test_collection_deleted_while_indexing(
    service: Convscope, photos: list[tuple[str, bytes]]
) -> None:
    cid = new_collection(service, photos[:12], "deleted")
    model = service.model(DEFAULT)

    def delete_it(step: int, total: int) -> None:
        if step < total:
            service.delete_collection(cid)

    with pytest.raises(UnknownCollectionError):
        service.collections.build(model, cid, ["conv_stem"], 4, delete_it, batch_size=4)
    assert not service.collections.store.root.joinpath(cid).exists()
    assert cid not in {c["id"] for c in service.list_collections()}


def test_empty_collection_and_flat_layer_are_refused(service: Convscope) -> None:
    cid = str(service.create_collection("empty")["id"])
    with pytest.raises(EmptyCollectionError) as err:
        service.index_collection(DEFAULT, cid)
    assert err.value.code == "empty_collection"
    with pytest.raises(NotSpatialLayerError) as flat:
        service.collections._check_layers(service.model(DEFAULT), ["classifier"])
    assert flat.value.code == "not_spatial"


def test_index_is_keyed_by_the_weights(service: Convscope, indexed: str) -> None:
    model = service.model(DEFAULT)
    key = service.collections.model_key(model)
    assert key == service.collections.model_key(model)
    saved = {n: p.clone() for n, p in model.module.state_dict().items()}
    try:
        with torch.no_grad():
            next(model.module.parameters()).add_(1.0)
        service.collections._model_keys.clear()
        assert service.collections.model_key(model) != key
    finally:
        model.module.load_state_dict(saved)
        service.collections._model_keys.clear()
    assert service.collections.model_key(model) == key


def test_every_spatial_module_reduced_from_its_own_output(service: Convscope) -> None:
    """All 261 spatial modules of the default model in one pass: each layer's statistics are
    those of its own output. A key by data address once merged layers whose tensors reused a
    freed tensor's memory later in the pass (conv_stem and blocks.0.0.conv_dw, ...)."""
    from convscope.services.collections.service import spatial_layers
    from convscope.services.collections.stream import map_batch

    model = service.model(DEFAULT)
    layers = spatial_layers(model)
    named = dict(model.module.named_modules())
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    kept: dict[str, torch.Tensor] = {}
    handles = [
        named[layer].register_forward_hook(
            lambda _m, _i, out, layer=layer: kept.__setitem__(layer, out.detach().clone())
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            model.module(x)
    finally:
        for handle in handles:
            handle.remove()
    targets = {layer: named[layer] for layer in layers}
    # Two forward passes of one input differ by float rounding (oneDNN's kernels are not
    # bitwise repeatable): values with a tolerance, positions where they are not near-ties.
    checked = channels = 0
    for _ in range(2):  # and again: nothing carried over from one pass to the next
        partial, scores = map_batch(model.module, targets, x, 0, 4)
        for layer in layers:
            flat = kept[layer].flatten(2)  # [B, C, H*W]
            peak, where = flat.max(2)
            np.testing.assert_allclose(scores[layer].max, peak.numpy(), rtol=1e-4, atol=1e-5)
            layer_partial = partial.layers[layer]
            top = layer_partial.top_max
            best = peak.argmax(0)  # per channel, the image with the highest max
            second = peak.topk(2, dim=0).values[1]
            clear = (peak.max(0).values - second > 1e-3).numpy()
            np.testing.assert_array_equal(top.image[clear, 0], best.numpy()[clear], layer)
            # the argmax position where the maximum stands out within the map
            runner_up = flat.topk(2, dim=2).values[..., 1]
            alone = (peak - runner_up > 1e-3).gather(0, best[None]).squeeze(0).numpy() & clear
            expected_pos = where.gather(0, best[None]).squeeze(0).numpy()
            np.testing.assert_array_equal(top.pos[alone, 0], expected_pos[alone], layer)
            checked += int(alone.sum())
            channels += alone.size
            nonpos = (flat <= 0).sum((0, 2)).numpy()
            assert np.abs(layer_partial.nonpos - nonpos).max() <= 2, layer
    assert checked > channels / 2  # positions compared for most channels (ReLU6 ties aside)


def test_stream_equals_the_merge_of_batch_partials(service: Convscope) -> None:
    """Folding batches in place, the argmax searched only where an image can still enter a
    top-k, gives what merging every batch's full partial gives: the same top-k (positions
    included), histograms and counts; sums up to float64 rounding. With k=2 over 6 batches,
    most rows of the later batches skip the argmax."""
    from convscope.services.collections.stream import IndexStream

    model = service.model(DEFAULT)
    targets = {layer: model.submodule(layer) for layer in (*LAYERS, "blocks.0", "blocks.0.0")}
    rng = torch.Generator().manual_seed(5)
    batches = [torch.randn(3, 3, 128, 128, generator=rng) for _ in range(6)]
    k = 2
    stream = IndexStream(model.module, targets, k)
    # the reference reduces the very maps the stream saw (two forward passes of one input
    # differ by float rounding): every argmax searched, one partial a batch, merged
    kept: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, layer=layer: kept.__setitem__(layer, out.detach().clone())
        )
        for layer, module in targets.items()
    ]
    parts = []
    try:
        for i, x in enumerate(batches):
            got = stream.add(x)
            part, scores = reduce_maps(kept, 3 * i, k)
            parts.append(part)
            for layer in targets:
                np.testing.assert_array_equal(got[layer].max, scores[layer].max)
                np.testing.assert_array_equal(got[layer].mean, scores[layer].mean)
    finally:
        for handle in handles:
            handle.remove()
    streamed = stream.partial()
    _assert_equal(streamed, merge_all(parts))
    # blocks.0 returns blocks.0.0's output: one partial object for both names
    assert streamed.layers["blocks.0"] is streamed.layers["blocks.0.0"]
    # a stream that starts from a partial (an incremental build) continues it exactly
    resumed = IndexStream(model.module, targets, k, merge_all(parts[:4]), first=12)
    for x in batches[4:]:
        resumed.add(x)
    _assert_equal(resumed.partial(), streamed)


def test_layers_with_one_output_share_the_index_files(
    service: Convscope, photos: list[tuple[str, bytes]]
) -> None:
    cid = new_collection(service, photos[:6], "shared-files")
    layers = ["blocks.0", "blocks.0.0", "blocks.2", "blocks.2.0.conv_pwl"]
    service.collections.build(service.model(DEFAULT), cid, layers, k=3)
    reader = service.collections.reader(service.model(DEFAULT), cid)
    files = reader.manifest["files"]
    assert files[0] == files[1] and len(set(files)) == 3  # blocks.0 is blocks.0.0's output
    stored = {p.name for p in reader.folder.iterdir()}
    assert {f"scores-{f}.npy" for f in files} <= stored and "scores-1.npy" not in stored
    np.testing.assert_array_equal(reader.scores("blocks.0"), reader.scores("blocks.0.0"))
    assert reader.layer("blocks.0").count == 6
