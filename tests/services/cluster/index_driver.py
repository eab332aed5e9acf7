"""A Ray driver process for the indexing tests (Ray is never imported into pytest itself):

    python -m tests.services.cluster.index_driver ARGS.json

ARGS: address, data_dir, model, ids, shapes, k, options (RayIndexOptions fields), out (a
folder), base (commit the index there when the run is complete), pause (seconds after each
batch). Writes ``node`` (the id of the node it is a driver on: the head) and ``connected``
once it is a driver and waits for
``go`` (the test checks the listeners in between), then ``result.pkl``: the RayIndex, or the
exception text.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
import traceback
from pathlib import Path


def main(path: str) -> int:
    args = json.loads(Path(path).read_text())
    out = Path(args["out"])
    from convscope.config import Settings
    from convscope.services.cluster.indexing import RayIndexOptions, index_on_ray, write_index
    from convscope.services.cluster.jobs import connect

    settings = Settings(
        data_dir=args["data_dir"],
        weights_dir=args["data_dir"],
        models_dir=args["data_dir"],
        ray_address=args["address"],
    )
    connect(settings)
    import ray

    (out / "node").write_text(ray.get_runtime_context().get_node_id())  # the head's id
    (out / "connected").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not (out / "go").exists():
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.1)

    def progress(done: int, total: int) -> None:
        (out / "progress").write_text(f"{done} {total}")
        if args.get("pause"):  # give the test time to act between batches
            time.sleep(float(args["pause"]))

    shapes = {name: tuple(shape) for name, shape in args["shapes"].items()}
    try:
        result = index_on_ray(
            settings,
            args["model"],
            args["ids"],
            shapes,  # type: ignore[arg-type]
            args["k"],
            RayIndexOptions(**args["options"]),
            progress=progress,
        )
        if args.get("base"):
            write_index(Path(args["base"]), shapes, result, args["ids"], {"model": args["model"]})  # type: ignore[arg-type]
        payload: object = {"result": result}
    except Exception as exc:
        payload = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    (out / "result.pkl").write_bytes(pickle.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
