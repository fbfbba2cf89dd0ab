"""The exported classifier as files that load without running anyone's code: ``spec.json`` (the
registered architecture and its arguments, the normalisation, the post-hoc adjustment) and
``weights.pt`` (a state dict, read with ``torch.load(weights_only=True)``). No pickled classes and no
code shipped with the artifact: loading builds the architecture from this project's own registry.

``pipeline.tracking`` logs these files as an MLflow model (flavor ``longtail_lab``, and a
``python_function`` flavor whose loader is this module, so ``mlflow.pyfunc.load_model`` works where
the project is installed)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from models import MODELS, PosthocAdjusted, Standardized, create_model
from pipeline.errors import PipelineError, shown

SPEC, WEIGHTS = "spec.json", "weights.pt"
FORMAT = 1
_KEYS = {"format", "architecture", "num_classes", "in_channels", "image_size", "head", "head_scale",
         "classifier_only", "mean", "std", "posthoc_tau"}


class ModelFormatError(PipelineError):
    pass


def spec_of(architecture: str, *, num_classes: int, in_channels: int, image_size: int, head: str,
            head_scale: float, classifier_only: bool, mean, std, posthoc_tau: float = 0.0) -> dict:
    """The JSON description ``build`` turns back into the exported module."""
    return {"format": FORMAT, "architecture": architecture, "num_classes": int(num_classes),
            "in_channels": int(in_channels), "image_size": int(image_size), "head": head,
            "head_scale": float(head_scale), "classifier_only": bool(classifier_only),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std], "posthoc_tau": float(posthoc_tau)}


_BOUNDS = {"num_classes": (2, 100_000), "in_channels": (1, 16), "image_size": (1, 4096)}


def _check_values(spec: dict) -> None:
    """Types and sizes, before anything is allocated: a spec is untrusted input too."""
    for key, (low, high) in _BOUNDS.items():
        value = spec[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ModelFormatError(f"model spec: {key}={shown(value)} is not an integer in [{low}, {high}]")
    if spec["head"] not in ("linear", "normed") or not isinstance(spec["architecture"], str):
        raise ModelFormatError(f"model spec: head {shown(spec['head'])} / architecture {shown(spec['architecture'])}")
    for key in ("mean", "std"):
        values = spec[key]
        if (not isinstance(values, list) or len(values) != spec["in_channels"]
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise ModelFormatError(f"model spec: {key} must be {spec['in_channels']} numbers, got {shown(values)}")
    for key in ("head_scale", "posthoc_tau"):
        if not isinstance(spec[key], (int, float)) or isinstance(spec[key], bool):
            raise ModelFormatError(f"model spec: {key}={shown(spec[key])} is not a number")


def build(spec: dict) -> torch.nn.Module:
    """The exported module of ``spec`` with fresh weights: [0, 1] images in, logits out."""

    unknown, missing = set(spec) - _KEYS, _KEYS - set(spec)
    if spec.get("format") != FORMAT or unknown or missing:
        raise ModelFormatError(f"model spec: format {shown(spec.get('format'))} (expected {FORMAT}), unknown keys "
                               f"{shown(sorted(unknown))}, missing {sorted(missing)}")
    _check_values(spec)
    if spec["architecture"] not in MODELS:
        raise ModelFormatError(f"model spec: unknown architecture {shown(spec['architecture'])}; registered: "
                               f"{', '.join(sorted(MODELS))}")
    model = create_model(spec["architecture"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                         image_size=spec["image_size"], head=spec["head"], head_scale=spec["head_scale"])
    net = model.classifier() if spec["classifier_only"] else model
    if spec["posthoc_tau"]:
        net = PosthocAdjusted(net, torch.zeros(spec["num_classes"]), spec["posthoc_tau"])
    return Standardized(net, spec["mean"], spec["std"])


def save(folder: str | Path, spec: dict, module: torch.nn.Module) -> None:
    """Write ``spec.json`` and ``weights.pt``; ``module`` must be what ``build(spec)`` makes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}  # NCHW, whatever trained
    build(spec).load_state_dict(state)  # refuse to write what could not be loaded back
    (folder / SPEC).write_text(json.dumps(spec, indent=2))
    torch.save(state, folder / WEIGHTS)


def load(folder: str | Path, map_location: Optional[str | torch.device] = "cpu") -> torch.nn.Module:
    """The exported module from a folder ``save`` wrote (e.g. an MLflow model's local copy), in eval mode."""
    folder = Path(folder)
    try:
        spec = json.loads((folder / SPEC).read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested past the parser's depth
        raise ModelFormatError(f"{folder}: no readable {SPEC}: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(spec, dict):
        raise ModelFormatError(f"{folder / SPEC}: expected a JSON object")
    module = build(spec)
    try:
        state = torch.load(folder / WEIGHTS, map_location=map_location, weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise ModelFormatError(f"{folder / WEIGHTS}: not a plain state dict: {type(e).__name__}: {e}") from None
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelFormatError(f"{folder / WEIGHTS} does not fit {spec['architecture']}: {e}") from None
    return module.to(map_location or "cpu").eval()


class _PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` returns: logits for float32 N x C x H x W images in [0, 1]."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def predict(self, images, params=None):
        with torch.inference_mode():
            return self.module(torch.as_tensor(np.asarray(images, dtype=np.float32))).numpy()


def _load_pyfunc(path: str) -> _PyfuncModel:
    """MLflow's python_function loader: ``path`` is the model's data (its folder)."""
    folder = Path(path)
    return _PyfuncModel(load(folder if (folder / SPEC).exists() else folder.parent))
