"""Initialising a model's backbone from an earlier run (SSP pre-training, or any trained model):
the head is dropped; any key or shape that does not fit is an error that lists them."""
from __future__ import annotations

import os

import torch

from pipeline.errors import PipelineError
from pipeline.tracking import tracking_uri

CHECKPOINT_ARTIFACT = "checkpoint/checkpoint.pt"


class PretrainedError(PipelineError):
    pass


def checkpoint_path(ref: str) -> str:
    """A local checkpoint file, or the checkpoint artifact of the MLflow run ``ref``."""
    if os.path.exists(ref):
        return ref
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return mlflow.artifacts.download_artifacts(run_id=ref, artifact_path=CHECKPOINT_ARTIFACT)
    except Exception as e:
        raise PretrainedError(f"--pretrained {ref!r} is neither a checkpoint file nor a run with "
                              f"{CHECKPOINT_ARTIFACT} ({type(e).__name__}: {e})") from None


def _listed(keys: list[str], limit: int = 10) -> str:
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_backbone(model: torch.nn.Module, ref: str) -> dict:
    """Copy the backbone weights of ``ref`` into ``model.backbone``; returns what to record."""
    path = checkpoint_path(ref)
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state.get("model", state)
    backbone = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    if not backbone:
        raise PretrainedError(f"{path}: no backbone.* weights (keys start with {sorted({k.split('.')[0] for k in weights})})")
    own = model.backbone.state_dict()
    missing = sorted(set(own) - set(backbone))
    unexpected = sorted(set(backbone) - set(own))
    shapes = sorted(f"{k} {tuple(backbone[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(backbone) if own[k].shape != backbone[k].shape)
    if missing or unexpected or shapes:
        problems = [f"missing: {_listed(missing)}" if missing else "",
                    f"unexpected: {_listed(unexpected)}" if unexpected else "",
                    f"shape mismatch: {_listed(shapes)}" if shapes else ""]
        raise PretrainedError(f"{ref}: the backbone does not fit this model ("
                              + "; ".join(p for p in problems if p) + ")")
    model.backbone.load_state_dict(backbone)
    config = state.get("config", {}).get("train", {})
    return {"pretrained": ref, "pretrained_run_id": state.get("run_id"), "pretrained_model": config.get("model"),
            "pretrained_method": config.get("method")}
