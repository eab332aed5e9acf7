"""The convscope command: serve the API, or use the same services from a shell.

Over 300 lines: argparse wiring, one short block per command and capability; each
command only calls the facade.
"""

from __future__ import annotations

import argparse
import functools
import gc
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from convscope.config import Settings
from convscope.errors import ConvscopeError

if TYPE_CHECKING:
    from convscope.services.facade import Convscope

log = logging.getLogger("convscope")


def _service(settings: Settings) -> Convscope:
    from convscope.services.facade import Convscope

    return Convscope(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.cluster:
        return _serve_on_cluster(args, settings)
    # No cyclic garbage collection while torch, the app and the model load (0.8 s of a 3.5 s
    # start); Convscope.load_default freezes what was loaded and enables it again.
    gc.disable()
    if settings.device == "cpu" and "torch" not in sys.modules:
        # torchvision imports torch._dynamo, which imports triton (GPU kernels for
        # torch.compile) when it is installed; a CPU server never uses it: 76 MiB idle RSS
        # (docs/performance.md, "Idle footprint").
        sys.modules["triton"] = None  # type: ignore[assignment]
    import uvicorn

    from convscope.api.app import create_app
    from convscope.api.logs import uvicorn_log_config
    from convscope.api.protocol import protocol_class

    uvicorn.run(
        create_app(settings, bind_host=args.host),
        host=args.host,
        port=args.port,
        http=protocol_class(settings),  # header timeout, pending-connection bounds (issue 10)
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_level, settings.log_format),
        access_log=False,  # convscope.access logs each request, with route and request id
        timeout_graceful_shutdown=30,
    )
    return 0


# --- serve --cluster: the same app on Ray Serve (the `cluster` extra) -------------------------


def _autoscale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high):
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return int(low), int(high)


def _serve_on_cluster(args: argparse.Namespace, settings: Settings) -> int:
    """Deploy on Ray Serve, then hold the deployment until SIGTERM or Ctrl-C removes it."""
    import functools
    import signal
    import threading

    from convscope.api.app import create_app
    from convscope.services.cluster.serving import Scale, deploy, undeploy

    # Jobs too go to the cluster: every replica answers for every job.
    settings = settings.model_copy(update={"ray_address": args.cluster})
    low, high = args.autoscale or (None, None)
    scale = Scale(
        replicas=args.replicas,
        minimum=low,
        maximum=high,
        cpus=args.replica_cpus,
        gpus=args.replica_gpus,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    deploy(
        functools.partial(create_app, settings),
        address=args.cluster,
        namespace=settings.ray_namespace,
        scale=scale,
        host=args.host,
        port=args.port,
    )
    sys.stdout.write(f"serving on Ray Serve at http://{args.host}:{args.port}/\n")
    sys.stdout.flush()
    stop.wait()
    undeploy()
    return 0


def serve_application(args: dict[str, str] | None = None) -> object:
    """A Ray Serve application builder for Serve configs (KubeRay ``serveConfigV2``,
    ``import_path: convscope.cli:serve_application``): the app with settings from each
    replica's ``CONVSCOPE_*`` environment, jobs on the cluster it runs in."""
    import functools

    from convscope.api.app import create_app
    from convscope.services.cluster.serving import application

    del args  # replicas, resources and autoscaling come from the Serve config
    settings = Settings()
    settings = settings.model_copy(update={"ray_address": settings.ray_address or "auto"})
    return application(functools.partial(create_app, settings))


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


# --- shared by the commands: errors, output formats, images ------------------------------

SAMPLE_NAMES = "cat, coffee, rocket, astronaut"


class CliError(Exception):
    """A mistake on the command line: printed as ``convscope: error: ...``, exit status 2."""


def _write(path: Path, content: bytes) -> int:
    path.write_bytes(content)
    sys.stdout.write(f"wrote {path} ({len(content)} bytes)\n")
    return 0


Fmt = Literal["png", "json", "npy"]


def _format(path: Path, allowed: tuple[Fmt, ...] = ("png", "json", "npy")) -> Fmt:
    """The output format from ``-o``'s extension; anything else is refused before any work."""
    suffix = path.suffix.lower().lstrip(".")
    for fmt in allowed:
        if suffix == fmt:
            return fmt
    choices = ", ".join(f".{f}" for f in allowed)
    raise CliError(f"cannot write {path}: the output's extension must be one of {choices}")


def _image_file(image: str) -> bytes:
    try:
        return Path(image).read_bytes()
    except FileNotFoundError:
        raise CliError(
            f"{image!r} is neither a file nor a sample image; give an image file or a sample "
            f"name ({SAMPLE_NAMES})"
        ) from None


def _stored_image(service: Convscope, image: str) -> str | None:
    """The id of a sample by name (``cat``, ``sample:cat``) or of a stored image by id."""
    from convscope.errors import UnknownImageError

    if Path(image).is_file():
        return None
    try:
        return str(service.image_record(image)["id"])
    except UnknownImageError:
        return None


_ROUTES = (  # API hints in error messages, as the commands that show the same thing
    (re.compile(r"GET /api/models/([^/\s]+)/layers"), r"`convscope layers \1`"),
    (re.compile(r"GET /api/models\b"), "`convscope models`"),
    (
        re.compile(r"upload one with POST /api/images or pick one from GET /api/images"),
        f"give an image file or a sample name ({SAMPLE_NAMES})",
    ),
)


def cli_message(detail: str) -> str:
    """An error's detail with its HTTP route hints turned into ``convscope`` commands."""
    for pattern, replacement in _ROUTES:
        detail = pattern.sub(replacement, detail)
    return detail


def cmd_filters(args: argparse.Namespace, settings: Settings) -> int:
    from convscope.services.facade import FilterGrid, FilterView

    fmt = _format(args.output)
    view = FilterView(normalize=args.normalize, input_channel=args.input_channel)
    rendered = _service(settings).filters(
        args.model, args.layer, fmt, view, FilterGrid(scale=args.scale)
    )
    return _write(args.output, rendered.content)


def cmd_activations(args: argparse.Namespace, settings: Settings) -> int:
    from convscope.services.facade import MapView

    fmt = _format(args.output)
    service = _service(settings)
    view = MapView(
        channels=args.channels,
        order=args.order,
        colormap=args.colormap,
        normalize=args.normalize,
        scale=args.scale,
        limit=args.limit,
    )
    stored = _stored_image(service, args.image)
    if stored is not None:
        rendered = service.activations(args.model, stored, args.layer, fmt, view)
    else:
        data = _image_file(args.image)
        rendered = service.activations_once(args.model, data, args.layer, fmt, view)
    return _write(args.output, rendered.content)


def _image_id(service: Convscope, image: str) -> str:
    """A sample's id by name, a stored image's id, or the id of a file put into the store."""
    stored = _stored_image(service, image)
    if stored is not None:
        return stored
    record, _ = service.put_image(_image_file(image), Path(image).name)
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

    _format(args.output, ("png",))
    png = _service(settings).optimize_now(args.model, request, progress)
    return _write(args.output, png)


def cmd_cam(args: argparse.Namespace, settings: Settings) -> int:
    fmt = _format(args.output, ("png", "npy") if args.saliency else ("png", "npy", "json"))
    service = _service(settings)
    image_id = _image_id(service, args.image)
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


# --- convert: a .pth checkpoint -> a model folder ----------------------------------------


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    from convscope.services.facade import Convscope

    names = None
    if args.class_names:
        source = Path(args.class_names)
        text = source.read_text() if source.is_file() else args.class_names
        names = [n.strip() for n in (text.splitlines() if source.is_file() else text.split(","))]
        names = [n for n in names if n]
    pre = None
    if args.crop_size:
        pre = {"crop_size": args.crop_size, "resize_size": args.crop_size * 8 // 7}
    folder = args.output or (settings.models_path / (args.name or args.checkpoint.stem))
    if not args.checkpoint.is_file():
        raise CliError(f"no such checkpoint file: {args.checkpoint}")
    manifest = Convscope.convert_checkpoint(
        args.checkpoint,
        folder,
        architecture=args.architecture,
        num_classes=args.num_classes,
        class_names=names,
        name=args.name,
        preprocessing=pre,
        max_parameters=settings.max_model_parameters,
    )
    for note in manifest.get("notes", []):
        sys.stdout.write(f"note: {note}\n")
    sys.stdout.write(
        f"wrote {folder}/model.safetensors and {folder}/manifest.json "
        f"({manifest['architecture']}, {manifest['num_classes']} classes)\n"
    )
    return 0


def _add_convert(sub: Any) -> None:
    conv = sub.add_parser(
        "convert",
        help="turn a .pth state dict into a model folder (manifest.json + model.safetensors)",
        description="Read a PyTorch checkpoint with torch.load(weights_only=True) on this "
        "machine and write the model folder convscope serves: model.safetensors and "
        "manifest.json, checked the way the server checks them. Put the folder in "
        "CONVSCOPE_MODELS_DIR (the default output), or upload both files with POST /api/models.",
    )
    conv.add_argument("checkpoint", type=Path, help="a .pth or .pt file holding a state dict")
    conv.add_argument(
        "--architecture",
        required=True,
        help="torchvision/<name> or timm/<name>, e.g. torchvision/resnet18",
    )
    conv.add_argument("--num-classes", type=int, default=None, help="default: from the weights")
    conv.add_argument(
        "--class-names", default=None, help="a text file (one per line) or a comma list"
    )
    conv.add_argument("--name", default=None, help="the model's name (default: file stem)")
    conv.add_argument("--crop-size", type=int, default=None, help="input side in pixels")
    conv.add_argument(
        "-o", "--output", type=Path, default=None, help="folder (default: models dir/NAME)"
    )
    conv.set_defaults(run=cmd_convert)


# --- collections and dataset examples (issue 11) -------------------------------------------


def _bar(step: int, total: int) -> None:
    """A one-line progress bar on stderr."""
    width = 30
    filled = width * step // max(1, total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total} images")
    if step >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_collections(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    if args.action == "create":
        made = service.import_folder(args.name, args.folder)
        sys.stdout.write(f"{made['id']}  {made['name']}  {made['count']} images\n")
        for skip in made["skipped"]:
            sys.stderr.write(f"skipped {skip['name']}: {skip['reason']}\n")
        return 0
    for c in service.list_collections():
        sys.stdout.write(f"{c['id']}  {c['count']:>6} images  {c['name']}\n")
    return 0


def cmd_index(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    cid = service.find_collection(args.collection)
    summary = service.index_now(args.model, cid, tuple(args.layers or ()), args.k, _bar)
    sys.stdout.write(
        f"indexed {summary['images']} images ({summary['new']} new) on {summary['layers']} "
        f"layers: {summary['bytes']} bytes on disk\n"
    )
    for skip in summary["skipped"]:
        sys.stderr.write(f"skipped {skip['name']}: {skip['reason']}\n")
    return 0


def cmd_examples(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    cid = service.find_collection(args.collection)
    fmt: Literal["json", "png"] = "json" if args.output.suffix.lower() == ".json" else "png"
    rendered = service.dataset_examples(
        args.model, cid, args.layer, args.channel, args.k, args.by, fmt, args.show
    )
    return _write(args.output, rendered.content)


def _add_collections(sub: argparse._SubParsersAction) -> None:
    col = sub.add_parser("collections", help="image collections: list, or create from a folder")
    actions = col.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every collection with its image count")
    create = actions.add_parser("create", help="a collection of a folder's images (recursive)")
    create.add_argument("name")
    create.add_argument("folder", type=Path)
    col.set_defaults(run=cmd_collections)

    index = sub.add_parser("index", help="index a collection through a model (progress bar)")
    index.add_argument("model")
    index.add_argument("collection", help="the collection's id or name")
    index.add_argument("--layers", nargs="+", default=None, help="default: every spatial module")
    index.add_argument("-k", type=int, default=16, help="examples kept per channel (<= 64)")
    index.set_defaults(run=cmd_index)

    ex = sub.add_parser("examples", help="draw the dataset examples of a channel")
    ex.add_argument("model")
    ex.add_argument("collection", help="the collection's id or name")
    ex.add_argument("layer")
    ex.add_argument("channel", type=int)
    ex.add_argument("-o", "--output", type=Path, required=True, help=".png or .json")
    ex.add_argument("-k", type=int, default=9)
    ex.add_argument("--by", choices=("max", "mean"), default="max")
    ex.add_argument("--show", choices=("patch", "image", "overlay"), default="patch")
    ex.set_defaults(run=cmd_examples)


# --- weights: expanded weights, filter analysis, compare ------------------------------------


def cmd_expanded(args: argparse.Namespace, settings: Settings) -> int:
    fmt = _format(args.output)
    rendered = _service(settings).expanded(
        args.model, args.layer, args.channel, args.onto, fmt, top=args.top, scale=args.scale
    )
    return _write(args.output, rendered.content)


def cmd_analyse(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    service = _service(settings)
    if args.output is not None:
        fmt: Literal["png", "json"] = (
            "json" if _format(args.output, ("png", "json")) == "json" else "png"
        )
        return _write(args.output, service.filter_analysis(args.model, args.layer, fmt).content)
    body = orjson.loads(service.filter_analysis(args.model, args.layer, "json").content)
    for group, members in body["groups"].items():
        sys.stdout.write(f"{group} ({len(members)})\n")
        for i in members:
            f = body["filters"][i]
            angle = "-" if f["orientation"] is None else f"{f['orientation']:.0f} deg"
            sys.stdout.write(
                f"  {i:>4}  orientation {angle:>7}  frequency {f['frequency']:.3f} c/px  "
                f"energy {f['energy']:.4g}\n"
            )
    return 0


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    if args.output is not None:
        _format(args.output, ("json",))
    service = _service(settings)
    image = _image_id(service, args.image) if args.image else None
    result = service.compare_models(args.a, args.b, image)
    if args.output is not None:
        return _write(args.output, orjson.dumps(result))
    sys.stdout.write(
        f"first weight change: {result['first_weight_change']}\n"
        f"first activation change: {result['first_activation_change']}\n"
    )
    for row in result["layers"]:
        parts = []
        if "weight_change" in row:
            parts.append(f"weights {row['weight_change']:.3g}")
        if row.get("cka") is not None:
            parts.append(f"CKA {row['cka']:.4f}")
        if "activation_change" in row:
            parts.append(f"activations {row['activation_change']:.3g}")
        sys.stdout.write(f"{row['layer']:<40} {'  '.join(parts)}\n")
    return 0


def _add_weights(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("expanded", help="expanded weights of a channel onto the image or a layer")
    exp.add_argument("model")
    exp.add_argument("layer")
    exp.add_argument("channel", type=int)
    exp.add_argument("--onto", default="input", help="'input' (default) or an earlier layer")
    exp.add_argument("-o", "--output", type=Path, required=True, help=".png, .json or .npy")
    exp.add_argument("--top", type=int, default=16, help="PNG onto a layer: strongest channels")
    exp.add_argument("--scale", type=int, default=None)
    exp.set_defaults(run=cmd_expanded)

    ana = sub.add_parser("analyse", help="orientation, frequency and colour of first-layer filters")
    ana.add_argument("model")
    ana.add_argument("layer")
    ana.add_argument("-o", "--output", type=Path, default=None, help=".png grid or .json")
    ana.set_defaults(run=cmd_analyse)

    cmp = sub.add_parser("compare", help="where two checkpoints of one architecture differ")
    cmp.add_argument("a")
    cmp.add_argument("b")
    cmp.add_argument("--image", default=None, help="a file or sample name: adds CKA per layer")
    cmp.add_argument("-o", "--output", type=Path, default=None, help=".json")
    cmp.set_defaults(run=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convscope",
        description="See what a CNN has learned: serve the HTTP API and web UI, or draw "
        "filters, feature maps, feature visualisations and Grad-CAM from the shell. "
        f"Images are files or sample names ({SAMPLE_NAMES}).",
        parents=[_verbosity(0)],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every subcommand also takes -v, after its name (``convscope layers -v MODEL``).
    sub.add_parser = functools.partial(sub.add_parser, parents=[_verbosity(None)])  # type: ignore[method-assign]

    serve = sub.add_parser("serve", help="run the HTTP API and web UI")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    cluster = serve.add_argument_group(
        "Ray Serve", "run the same app as replicas on a Ray cluster (the `cluster` extra)"
    )
    cluster.add_argument("--cluster", metavar="ADDRESS", help="e.g. 127.0.0.1:6379")
    cluster.add_argument("--replicas", type=int, default=1, help="fixed replica count")
    cluster.add_argument(
        "--autoscale", type=_autoscale, metavar="MIN:MAX", help="autoscale between MIN and MAX"
    )
    cluster.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica")
    cluster.add_argument(
        "--replica-gpus", type=float, default=0.0, help="GPUs per replica (0.5: two per GPU)"
    )
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
    filters.add_argument(
        "--normalize",
        choices=("filter", "layer"),
        default=None,
        help="default: per filter, layer-wide for 1x1 kernels and reductions",
    )
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
    _add_convert(sub)
    _add_collections(sub)
    _add_weights(sub)
    return parser


def _verbosity(default: int | None) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default if default is not None else argparse.SUPPRESS,
        help="log what happens (-vv: debug); quiet by default",
    )
    return common


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    from convscope.api.logs import configure_logging

    # Quiet unless asked: the server logs at CONVSCOPE_LOG_LEVEL, the other commands warn only.
    verbose = getattr(args, "verbose", 0)
    level = ("warning", "info", "debug")[min(verbose, 2)]
    if args.command == "serve" and not verbose:
        level = settings.log_level
    configure_logging(level, settings.log_format)
    try:
        return int(args.run(args, settings))
    except CliError as exc:
        sys.stderr.write(f"convscope: error: {exc}\n")
        return 2
    except ConvscopeError as exc:
        sys.stderr.write(f"convscope: error: {cli_message(exc.detail)} [{exc.code}]\n")
        return 2
    except BrokenPipeError:  # `convscope layers M | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"convscope: error: {exc.strerror or exc}{where}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
