"""Scoring images with a classifier logged in MLflow, one function for batch and streaming:
``score(df, model)`` maps the image rows of any DataFrame (a batch read or a micro-batch) to
pseudo-label rows. The model is loaded once per Python worker (cached at module level; Spark reuses
workers between tasks), on the GPU when there is one."""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from pipeline import schema
from pipeline.errors import PipelineError, shown
from pipeline.images import decode
from pipeline.tracking import load_model, tracking_uri

RUN_ID_LENGTH = 32
ERROR = "error"  # why a row could not be scored (None: scored)
SCORED = tuple(c for c in schema.LABEL_COLUMNS if c.name != "scored_at") + (
    schema.Column(ERROR, schema.pa.string(), True, "why the image could not be scored; null when it was"),)


class StreamError(PipelineError):
    pass


class ModelError(PipelineError):
    pass


@dataclass(frozen=True)
class ScoringModel:
    """What a worker needs to load the model itself: the URI and the store it lives in."""
    uri: str
    run_id: str
    tracking_uri: str
    device: str = "auto"
    batch_size: int = 0  # images per forward pass; 0: the device's default (pipeline.accel.inference_batch)
    threads: int = 1
    version: Optional[str] = None  # "name/version" when the model was asked for as models:/...
    precision: str = "fp32"  # fp32 | bf16: the forward pass in bf16 autocast (pseudolabel.precision)


def model_uri(ref: str) -> str:
    """An MLflow run id means that run's logged model; URIs (runs:/, models:/, file paths) pass through."""
    ref = ref.strip()
    if len(ref) == RUN_ID_LENGTH and all(c in "0123456789abcdef" for c in ref):
        return f"runs:/{ref}/model"
    return ref


def resolve(ref: str, device: str = "auto", batch_size: int = 0, threads: int = 1,
            precision: str = "fp32") -> ScoringModel:
    """Check on the driver that ``ref`` names a logged model and find the run that logged it."""
    import mlflow
    import torch

    from pipeline.accel import warn_slow_bf16

    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())  # as the executors resolve it
    warn_slow_bf16(precision, "cuda" if on_gpu else "cpu", "pseudolabel.precision")
    mlflow.set_tracking_uri(tracking_uri())
    uri = model_uri(ref)
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as e:  # MlflowException, OSError...: the message says which
        raise ModelError(f"cannot find model {shown(ref)} in the MLflow store {tracking_uri()}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    if not info.run_id:
        raise ModelError(f"model {shown(uri)} was not logged by an MLflow run; the pseudo-labels need its provenance")
    owner = owning_run(uri)
    if owner and info.run_id != owner:  # an MLmodel copied or edited: it would score with another run's model
        raise ModelError(f"model {shown(uri)} belongs to run {owner}, but its MLmodel names run {shown(info.run_id)}; "
                         f"refusing to score with a model that is not the one asked for")
    # pinned here, once: a models:/name@alias (or latest) would be resolved again by every worker and
    # every restart, and could mix models in one output under one recorded run id
    pinned = f"runs:/{info.run_id}/{info.artifact_path or 'model'}"
    try:  # on the driver, before the stream opens its run: not as a trace from every executor
        load_model(pinned)
    except Exception as e:
        raise ModelError(f"model {shown(uri)} cannot be loaded: {type(e).__name__}: {str(e)[:500]}") from None
    return ScoringModel(pinned, info.run_id, tracking_uri(), device, batch_size, threads, registered_version(uri),
                        precision)


def owning_run(uri: str) -> Optional[str]:
    """The run a runs:/ or models:/ URI says the model belongs to (None for a path)."""
    import mlflow

    if uri.startswith("runs:/"):
        return uri[len("runs:/"):].split("/", 1)[0]
    version = registered_version(uri)
    if version:
        name, _, number = version.rpartition("/")
        return mlflow.tracking.MlflowClient().get_model_version(name, number).run_id
    return None


def registered_version(uri: str) -> Optional[str]:
    """"name/version" of a models:/name/version, models:/name@alias or models:/name/latest URI, else None."""
    import mlflow

    if not uri.startswith("models:/"):
        return None
    client = mlflow.tracking.MlflowClient()
    ref = uri[len("models:/"):].rstrip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return f"{name}/{client.get_model_version_by_alias(name, alias).version}"
    name, _, version = ref.rpartition("/")
    if version == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        return f"{name}/{max(int(v.version) for v in versions)}"
    return f"{name}/{version}" if name else None


_MODELS: dict[ScoringModel, tuple] = {}


def load(ref: ScoringModel):
    """(model, device), loaded once per process."""
    if ref not in _MODELS:
        import torch

        torch.set_num_threads(ref.threads)
        from pipeline.distributed import wants_gpu

        device = torch.device("cuda" if wants_gpu(ref.device) else "cpu")
        model = load_model(ref.uri, map_location=device, store=ref.tracking_uri)
        # channels-last convolutions: ~20% faster ResNet-32 inference on this CPU, the layout GPUs prefer
        _MODELS[ref] = (model.to(memory_format=torch.channels_last), device)
    return _MODELS[ref]


def images_array(frame: pd.DataFrame) -> tuple[np.ndarray, list[Optional[str]]]:
    """(N x C x H x W uint8 of the rows that decode, one error message or None per row). The batch's
    shape is its most common one; a row of another shape, a raw row of the wrong length or bytes that
    do not decode gets an error instead of failing (or, raw lengths cancelling out, shifting) the rest."""
    shapes = list(zip(frame["height"], frame["width"], frame["channels"]))
    (h, w, c), _ = Counter(shapes).most_common(1)[0]
    errors: list[Optional[str]] = []
    pixels = []
    for image, fmt, shape in zip(frame["image"], frame["image_format"], shapes):
        if shape != (h, w, c):
            errors.append(f"shape {shape[0]}x{shape[1]}x{shape[2]} in a batch of {h}x{w}x{c} (ingest with --image-size)")
        elif fmt == "raw" and len(image) != h * w * c:
            errors.append(f"raw image of {len(image)} bytes, {h}x{w}x{c} needs {h * w * c}")
        else:
            try:
                pixels.append(decode(image, fmt, h, w, c))
                errors.append(None)
            except Exception as e:  # PIL raises many kinds for broken data
                errors.append(f"cannot decode the {fmt} image: {type(e).__name__}: {e}")
    array = np.stack(pixels) if pixels else np.zeros((0, h, w, c), np.uint8)
    return array.transpose(0, 3, 1, 2), errors


def score_frame(frame: pd.DataFrame, model, device, run_id: str, batch_size: int,
                precision: str = "fp32") -> pd.DataFrame:
    """Pseudo-label rows (``SCORED``: schema.LABEL_COLUMNS but scored_at, plus ``error``) for a pandas
    frame of image rows; a row that cannot be scored keeps its id and says why in ``error``. With
    ``precision`` bf16 the forward pass runs in bf16 autocast (about 3x fp32 on a CPU with
    AVX512-BF16), the softmax in fp32."""
    import torch

    from pipeline.accel import Accel

    if batch_size < 1:
        raise ValueError(f"score_frame: batch_size must be >= 1 (resolve 0 with pipeline.accel.inference_batch), "
                         f"got {batch_size}")
    columns = [c.name for c in SCORED]
    if frame.empty:
        return pd.DataFrame({c: [] for c in columns})
    pixels, errors = images_array(frame)
    probs = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(pixels[start:start + batch_size])).to(device).float().div_(255)
            x = x.contiguous(memory_format=torch.channels_last)
            with Accel(precision=precision).autocast(device):
                logits = model(x)
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    good = np.array([e is None for e in errors])
    p = np.concatenate(probs) if probs else np.zeros((0, 0), np.float32)
    n = len(frame)
    predicted, confidence = np.full(n, -1, np.int32), np.zeros(n, np.float32)  # placeholders (NaN would be null)
    vectors = [np.zeros(0, np.float32)] * n
    if good.any():
        predicted[good], confidence[good] = p.argmax(1), p.max(1)
    for row, vector in zip(np.flatnonzero(good), p.astype(np.float32)):
        vectors[row] = vector
    return pd.DataFrame({"id": frame["id"].to_numpy(), "predicted": predicted, "confidence": confidence,
                         "probs": vectors, "model_run_id": run_id, ERROR: errors})


def _score_partition(frames: Iterator[pd.DataFrame], ref: ScoringModel) -> Iterator[pd.DataFrame]:
    from pipeline.accel import inference_batch

    model, device = load(ref)
    for frame in frames:
        yield score_frame(frame, model, device, ref.run_id, inference_batch(ref.batch_size, device), ref.precision)


IMAGE_INPUT = ("id", "image", "image_format", "height", "width", "channels")


def score(df, model: ScoringModel):
    """The pseudo-label rows of ``df``'s images (``SCORED`` + scored_at): a lazy DataFrame, for batch
    reads and micro-batches alike. Rows whose ``error`` is set could not be scored."""
    from pyspark.sql import functions as F

    scored = df.select(*IMAGE_INPUT).mapInPandas(functools.partial(_score_partition, ref=model),
                                                 schema.spark_schema(SCORED))
    return scored.withColumn("scored_at", F.current_timestamp())
