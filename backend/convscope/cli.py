"""The ``convscope`` command: serve the API, or use the same services from a shell."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from convscope.config import Settings
from convscope.errors import ConvscopeError

if TYPE_CHECKING:
    from convscope.services.facade import Convscope

log = logging.getLogger("convscope")


def _service(settings: Settings) -> Convscope:
    from convscope.services.facade import Convscope

    return Convscope(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    # No cyclic garbage collection while torch, the app and the model load (0.8 s of a 3.5 s
    # start); Convscope.load_default freezes what was loaded and enables it again.
    gc.disable()
    import uvicorn

    from convscope.api.app import create_app
    from convscope.api.logs import uvicorn_log_config

    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_level, settings.log_format),
        access_log=False,  # convscope.access logs each request, with route and request id
        timeout_graceful_shutdown=30,
    )
    return 0


def cmd_models(_args: argparse.Namespace, settings: Settings) -> int:
    for m in _service(settings).models():
        state = "available" if m["available"] else f"unavailable: {m['error']}"
        sys.stdout.write(f"{m['name']:<28} {m['source']:<12} {state}\n")
    return 0


def cmd_layers(args: argparse.Namespace, settings: Settings) -> int:
    for layer in _service(settings).layers(args.model):
        shape = "x".join(map(str, layer["output_shape"] or [])) or "-"
        mark = " [filters]" if layer["has_filters"] else ""
        sys.stdout.write(
            f"{layer['index']:>4} {layer['name']:<40} {layer['type']:<22} {shape}{mark}\n"
        )
    return 0


def _write(path: Path, content: bytes) -> int:
    path.write_bytes(content)
    sys.stdout.write(f"wrote {path} ({len(content)} bytes)\n")
    return 0


def _format(path: Path) -> Literal["png", "json", "npy"]:
    suffix = path.suffix.lower()
    return "json" if suffix == ".json" else "npy" if suffix == ".npy" else "png"


def cmd_filters(args: argparse.Namespace, settings: Settings) -> int:
    from convscope.services.facade import FilterGrid, FilterView

    view = FilterView(normalize=args.normalize, input_channel=args.input_channel)
    rendered = _service(settings).filters(
        args.model, args.layer, _format(args.output), view, FilterGrid(scale=args.scale)
    )
    return _write(args.output, rendered.content)


def cmd_activations(args: argparse.Namespace, settings: Settings) -> int:
    from convscope.services.facade import MapView

    service = _service(settings)
    view = MapView(
        channels=args.channels,
        order=args.order,
        colormap=args.colormap,
        normalize=args.normalize,
        scale=args.scale,
        limit=args.limit,
    )
    samples = {r["name"]: r["id"] for r in service.list_images() if r["kind"] == "sample"}
    fmt = _format(args.output)
    if args.image in samples:
        rendered = service.activations(args.model, samples[args.image], args.layer, fmt, view)
    else:
        data = Path(args.image).read_bytes()
        rendered = service.activations_once(args.model, data, args.layer, fmt, view)
    return _write(args.output, rendered.content)


def _image_id(service: Convscope, image: str) -> str:
    """A sample's id by name, or the id of a file put into the store."""
    samples = {r["name"]: r["id"] for r in service.list_images() if r["kind"] == "sample"}
    if image in samples:
        return str(samples[image])
    record, _ = service.put_image(Path(image).read_bytes(), Path(image).name)
    return str(record.id)


def cmd_optimize(args: argparse.Namespace, settings: Settings) -> int:
    from convscope.services.optvis.optimize import OptimizeSettings
    from convscope.services.optvis.runs import OptimizeRequest

    request = OptimizeRequest(
        layer=args.layer,
        channels=tuple(args.channel),
        kind=args.kind,
        negative=args.negative,
        settings=OptimizeSettings(
            steps=args.steps, size=args.size, lr=args.lr, seed=args.seed, param=args.param
        ),
    )

    def progress(step: int, total: int) -> None:
        if step == total or step % max(1, total // 10) == 0:
            sys.stderr.write(f"step {step}/{total}\n")

    png = _service(settings).optimize_now(args.model, request, progress)
    return _write(args.output, png)


def cmd_cam(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    image_id = _image_id(service, args.image)
    fmt = _format(args.output)
    if args.saliency:
        rendered = service.saliency(
            args.model,
            image_id,
            method=args.saliency,
            class_index=args.class_index,
            fmt="npy" if fmt == "npy" else "png",
            samples=16,
            noise=0.15,
            seed=0,
        )
    else:
        rendered = service.cam(
            args.model,
            image_id,
            layer=args.layer,
            class_index=args.class_index,
            method=args.method,
            fmt=fmt,
            alpha=args.alpha,
        )
    return _write(args.output, rendered.content)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convscope", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API and web UI")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=cmd_serve)

    sub.add_parser("models", help="list models and whether they are available").set_defaults(
        run=cmd_models
    )
    layers = sub.add_parser("layers", help="list a model's layers in forward order")
    layers.add_argument("model")
    layers.set_defaults(run=cmd_layers)

    filters = sub.add_parser("filters", help="draw a conv layer's filters")
    filters.add_argument("model")
    filters.add_argument("layer")
    filters.add_argument("-o", "--output", type=Path, required=True, help=".png, .json or .npy")
    filters.add_argument("--normalize", choices=("filter", "layer"), default="filter")
    filters.add_argument("--input-channel", type=int, default=None)
    filters.add_argument("--scale", type=int, default=None)
    filters.set_defaults(run=cmd_filters)

    acts = sub.add_parser("activations", help="draw a layer's feature maps for an image")
    acts.add_argument("model")
    acts.add_argument("image", help="a file path, or a sample name: cat, coffee, rocket, astronaut")
    acts.add_argument("layer")
    acts.add_argument("-o", "--output", type=Path, required=True, help=".png, .json or .npy")
    acts.add_argument("--channels", default=None, help="e.g. 0,3,5-9")
    acts.add_argument("--order", choices=("index", "mean"), default="index")
    acts.add_argument("--limit", type=int, default=None, help="at most this many channels")
    acts.add_argument("--colormap", default="viridis")
    acts.add_argument("--normalize", choices=("channel", "layer"), default="channel")
    acts.add_argument("--scale", type=int, default=None)
    acts.set_defaults(run=cmd_activations)

    opt = sub.add_parser("optimize", help="feature visualisation: the image a channel wants")
    opt.add_argument("model")
    opt.add_argument("layer")
    opt.add_argument("channel", type=int, nargs="+", help="one image per channel, one batch")
    opt.add_argument("-o", "--output", type=Path, required=True, help=".png")
    opt.add_argument("--kind", choices=("channel", "neuron", "layer"), default="channel")
    opt.add_argument("--negative", action="store_true", help="minimise instead")
    opt.add_argument("--steps", type=int, default=256)
    opt.add_argument("--size", type=int, default=224)
    opt.add_argument("--lr", type=float, default=0.05)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--param", choices=("fourier", "pixel"), default="fourier")
    opt.set_defaults(run=cmd_optimize)

    cam = sub.add_parser("cam", help="Grad-CAM (or --saliency) for an image")
    cam.add_argument("model")
    cam.add_argument("image", help="a file path, or a sample name: cat, coffee, rocket, astronaut")
    cam.add_argument("-o", "--output", type=Path, required=True, help=".png, .json or .npy")
    cam.add_argument("--layer", default=None, help="default: the model's last spatial layer")
    cam.add_argument("--class-index", type=int, default=None, help="default: top-1")
    cam.add_argument("--method", choices=("gradcam", "gradcampp", "scorecam"), default="gradcam")
    cam.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in the PNG")
    cam.add_argument(
        "--saliency",
        choices=("vanilla", "smoothgrad", "guided"),
        default=None,
        help="draw a saliency map instead of a CAM",
    )
    cam.set_defaults(run=cmd_cam)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    from convscope.api.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        return int(args.run(args, settings))
    except ConvscopeError as exc:
        sys.stderr.write(f"convscope: error: {exc.detail} [{exc.code}]\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"convscope: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
