"""Model names -> adapter classes, imported only when a model is actually used."""

import importlib
from typing import Any

from dv4d.models.errors import UnknownModelError
from dv4d.models.weights import ResolvedWeights

ADAPTERS: dict[str, str] = {
    "depth-pro": "dv4d.models.depth:DepthProAdapter",
    "depth-anything-v2-metric": "dv4d.models.depth:DepthAnythingMetricAdapter",
    "owlv2": "dv4d.models.detect:Owlv2Adapter",
    "sam": "dv4d.models.segment:SamAdapter",
    "qwen2.5-vl": "dv4d.models.vlm:QwenVlAdapter",
}
"""Registry name -> ``module:Class``; the module is imported on first use only."""


def adapter_class(name: str) -> type:
    """The adapter class registered under ``name`` (imports its module now)."""
    if name not in ADAPTERS:
        raise UnknownModelError(f"unknown model '{name}'; known: {', '.join(sorted(ADAPTERS))}")
    module, cls = ADAPTERS[name].split(":")
    loaded: type = getattr(importlib.import_module(module), cls)
    return loaded


def create(name: str, weights: ResolvedWeights | None, full_size: bool = False) -> Any:
    """A not-yet-loaded adapter: pretrained ``weights``, or ``None`` for a random-init network (the tiny
    one, or the checkpoint's architecture at full size with ``full_size``)."""
    return adapter_class(name)(weights, full_size)
