"""The model registry: specs from every source, models loaded lazily and kept in memory."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from convscope.config import Settings
from convscope.errors import (
    ConvscopeError,
    ModelUnavailableError,
    UnknownLayerError,
    UnknownModelError,
    UnsupportedOperatorError,
)
from convscope.services.models import sources
from convscope.services.models.device import resolve_device
from convscope.services.models.layers import LayerInfo, default_cam_layer, trace_layers
from convscope.services.models.sources import ModelSpec

log = logging.getLogger(__name__)

ROOT_LAYER = "output"


@dataclass
class LoadedModel:
    """A model in memory, in eval mode, with its layer table.

    ``lock`` serialises forward passes that install hooks, so concurrent requests never see
    each other's tensors.
    """

    spec: ModelSpec
    module: nn.Module
    layers: list[LayerInfo]
    device: torch.device
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Layers whose output a later op changes in place (learned by capture.py, under ``lock``).
    inplace_outputs: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._by_name = {info.name: info for info in self.layers}
        self._modules = {name or ROOT_LAYER: m for name, m in self.module.named_modules()}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cam_layer(self) -> str | None:
        """The default layer for class activation maps (see ``layers.default_cam_layer``)."""
        return default_cam_layer(self.layers)

    def layer(self, name: str) -> LayerInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownLayerError(self.spec.name, name) from None

    def submodule(self, name: str) -> nn.Module:
        self.layer(name)
        return self._modules[name]

    def named_modules(self) -> Iterable[tuple[str, nn.Module]]:
        """Every module by layer name (the root as ``ROOT_LAYER``), in ``named_modules`` order."""
        return self._modules.items()


class ModelRegistry:
    """Name -> spec table, plus an LRU of loaded models (the default model is never evicted)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._errors: dict[str, str] = {}
        self.specs: dict[str, ModelSpec] = {}
        self.load_failures = 0  # since start: exported as a metric
        self._hashes: sources.HashCache = {}  # weights files hash-checked at listing, once
        self.refresh()

    def refresh(self) -> None:
        """(Re)read every source: cheap, never loads or downloads weights."""
        specs: dict[str, ModelSpec] = {}
        errors: dict[str, str] = {}
        try:
            embedded = sources.embedded_spec()
            specs[embedded.name] = embedded
        except Exception as exc:  # a broken install must not take the listing down
            errors["efficientnet_lite0"] = f"cannot set up the embedded model: {exc!r}"
        for name in sources.TORCHVISION_MODELS:
            specs[name] = sources.torchvision_spec(name, self.settings, hashes=self._hashes)
        if self.settings.untrained_models:
            for name in sources.TORCHVISION_MODELS:
                spec = sources.torchvision_spec(name, self.settings, untrained=True)
                specs[spec.name] = spec
        user, user_errors = sources.discover_user_models(
            self.settings.models_path, self.settings.max_model_parameters
        )
        for spec in user:
            if spec.name in specs:
                user_errors[spec.name] = f"name {spec.name!r} is taken by a built-in model"
                continue
            specs[spec.name] = spec
        errors.update(user_errors)
        with self._lock:
            self.specs = specs
            self._errors = {k: v for k, v in self._errors.items() if k in specs} | errors
            for name in list(self._loaded):
                if name not in specs or self._loaded[name].spec.weights != specs[name].weights:
                    del self._loaded[name]

    def spec(self, name: str) -> ModelSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownModelError(name, self.specs) from None

    def describe(self) -> list[dict[str, Any]]:
        """The public listing: one entry per model, broken ones included with their error."""
        out = []
        with self._lock:
            loaded = dict(self._loaded)
            errors = dict(self._errors)
        for name, spec in self.specs.items():
            error = errors.get(name) or spec.unavailable
            model = loaded.get(name)
            out.append(
                {
                    "name": name,
                    "title": spec.title,
                    "source": spec.source,
                    "description": spec.description,
                    "available": error is None,
                    "loaded": model is not None,
                    "default": name == self.settings.default_model,
                    "error": error,
                    "hint": spec.hint if error else None,
                    "input_size": list(spec.preprocessing.input_size),
                    "num_classes": len(spec.categories),
                    "preprocessing": spec.preprocessing.as_dict(),
                    "weights": spec.weights,
                    "verified": spec.verified,
                    "num_layers": len(model.layers) if model else None,
                    "num_parameters": (
                        sum(p.numel() for p in model.module.parameters()) if model else None
                    ),
                }
            )
        for name, error in errors.items():
            if name not in self.specs:
                out.append(
                    {
                        "name": name,
                        "title": name,
                        "source": "user",
                        "available": False,
                        "loaded": False,
                        "default": False,
                        "error": error,
                        "hint": None,
                        "input_size": None,
                        "num_classes": None,
                    }
                )
        return out

    def describe_one(self, name: str) -> dict[str, Any]:
        """One entry of :meth:`describe` (``UnknownModelError`` when not listed)."""
        for entry in self.describe():
            if entry["name"] == name:
                return entry
        raise UnknownModelError(name, self.specs)

    def get(self, name: str) -> LoadedModel:
        """The loaded model ``name``, loading it on first use (one loader per name at a time)."""
        spec = self.spec(name)
        with self._lock:
            model = self._loaded.get(name)
            if model is not None:
                self._loaded.move_to_end(name)
                return model
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:
            with self._lock:
                if name in self._loaded:
                    return self._loaded[name]
            if spec.unavailable:
                raise ModelUnavailableError(
                    name, spec.unavailable + (f"; {spec.hint}" if spec.hint else "")
                )
            model = self._load(spec)
            with self._lock:
                self._loaded[name] = model
                self._errors.pop(name, None)
                self._evict()
            return model

    def _load(self, spec: ModelSpec) -> LoadedModel:
        start = time.perf_counter()
        try:
            module = spec.build()
            module.eval().requires_grad_(False).to(self.device)
            layers = trace_layers(module, spec.preprocessing.input_size)
        except UnsupportedOperatorError as exc:  # the file's content, not a passing state: 422
            self._record_failure(spec.name, exc.detail)
            raise
        except ConvscopeError as exc:
            self._record_failure(spec.name, exc.detail)
            raise ModelUnavailableError(spec.name, exc.detail) from exc
        except Exception as exc:  # any failure in user code or files: report, keep serving
            self._record_failure(spec.name, f"{type(exc).__name__}: {exc}")
            raise ModelUnavailableError(spec.name, f"failed to load: {exc!r}") from exc
        seconds = time.perf_counter() - start
        log.info("loaded model %s in %.2fs (%d layers)", spec.name, seconds, len(layers))
        return LoadedModel(spec, module, layers, self.device, seconds)

    def _record_failure(self, name: str, error: str) -> None:
        log.error("model %s failed to load: %s", name, error)
        with self._lock:
            self._errors[name] = error
            self.load_failures += 1

    def _evict(self) -> None:
        while len(self._loaded) > self.settings.max_loaded_models:
            for name in self._loaded:
                if name != self.settings.default_model:
                    del self._loaded[name]
                    break
            else:
                return
