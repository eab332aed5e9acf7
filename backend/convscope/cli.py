"""The ``convscope`` command: serve the API, or use the same services from a shell."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from convscope.config import Settings
from convscope.errors import ConvscopeError

log = logging.getLogger("convscope")


def _service(settings: Settings):
    from convscope.services.visualize import Convscope

    return Convscope(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from convscope.api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
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


def _format(path: Path) -> str:
    suffix = path.suffix.lstrip(".").lower()
    return suffix if suffix in ("png", "json", "npy") else "png"


def cmd_filters(args: argparse.Namespace, settings: Settings) -> int:
    from convscope.services.filters import FilterView

    view = FilterView(normalize=args.normalize, input_channel=args.input_channel)
    rendered = _service(settings).filters(
        args.model, args.layer, _format(args.output), view, scale=args.scale
    )
    return _write(args.output, rendered.content)


def cmd_activations(args: argparse.Namespace, settings: Settings) -> int:
    from convscope.services.visualize import MapView

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
