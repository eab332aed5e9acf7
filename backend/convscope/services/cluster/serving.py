"""The same FastAPI app as replicas on Ray Serve: ``convscope serve --cluster ADDRESS``.

Each replica builds the app in its own process with the builder it is given (the CLI passes
``create_app`` with the settings), so every replica runs the ordinary lifespan: the default
model loads in the background, ``/readyz`` answers 503 until it is in memory, models load
per replica into the registry's LRU. The settings carry ``ray_address``, so every replica's
jobs go to the cluster's one job table: a job started through one replica is followed
through any other. Serve's HTTP proxy listens on ``host:port`` (loopback by default).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

log = logging.getLogger(__name__)

APP_NAME = "convscope"


@dataclass(frozen=True)
class Scale:
    """``replicas`` fixed replicas, or an autoscaling range ``minimum``..``maximum``."""

    replicas: int = 1
    minimum: int | None = None
    maximum: int | None = None
    cpus: float = 1.0  # per replica
    gpus: float = 0.0  # per replica: 0.5 puts two replicas on one GPU
    max_ongoing_requests: int = 64

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``serve.deployment``."""
        out: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus, "num_gpus": self.gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            # A replica loads torch and a model before it answers: give it time.
            "health_check_timeout_s": 60,
            "graceful_shutdown_timeout_s": 30,
        }
        if self.minimum is not None and self.maximum is not None:
            out["autoscaling_config"] = {
                "min_replicas": self.minimum,
                "max_replicas": self.maximum,
                "target_ongoing_requests": 4,
            }
        else:
            out["num_replicas"] = self.replicas
        return out


def _bind_internal_grpc_to_node_address() -> None:
    """Ray Serve 2.60 binds each replica's inter-deployment gRPC server to ``[::]``, every
    interface, with no setting to change it (``serve/_private/replica.py``). Bind it to this
    node's Ray address instead: 127.0.0.1 on a loopback cluster, the private-network address
    the node was started with otherwise. Called in the replica before Serve starts that server
    (it starts after the user constructor); the loopback test fails if this stops working."""
    from ray.serve._private import replica as replica_module

    original = getattr(replica_module, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_convscope", False):
        if original is None:
            log.warning("could not restrict the replica's gRPC listener: Ray changed")
        return
    host = ray.util.get_node_ip_address()
    host = f"[{host}]" if ":" in host else host

    def bind(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = f"{host}:{address.removeprefix('[::]:')}"
        return original(server, address)

    bind._convscope = True  # type: ignore[attr-defined]
    replica_module.add_port_to_grpc_server = bind


class ConvscopeReplica:
    """One Serve replica: the app comes from ``builder()``, called in the replica."""

    def __init__(self, builder: Callable[[], Any]) -> None:
        _bind_internal_grpc_to_node_address()
        self._builder = builder

    def __serve_build_asgi_app__(self) -> Any:
        return self._builder()


def application(builder: Callable[[], Any], scale: Scale | None = None) -> Any:
    """The Serve application: ``ConvscopeReplica`` replicas that build the app with
    ``builder``. ``scale=None`` leaves replicas and resources to the Serve config (KubeRay's
    ``serveConfigV2``)."""
    options = {} if scale is None else scale.options()
    deployment: Any = serve.deployment(name=APP_NAME, **options)
    return deployment(serve.ingress()(ConvscopeReplica)).bind(builder)


def deploy(
    builder: Callable[[], Any],
    *,
    address: str,
    namespace: str,
    scale: Scale,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Connect to the cluster at ``address`` and run the app on ``scale`` replicas; returns
    once the application is deployed (its replicas constructed)."""
    if not ray.is_initialized():
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(builder, scale), name=APP_NAME, route_prefix="/", blocking=False)
    log.info("convscope is served by Ray Serve on http://%s:%d/", host, port)


def undeploy() -> None:
    """Remove the application from the cluster (the cluster itself keeps running)."""
    serve.delete(APP_NAME)
