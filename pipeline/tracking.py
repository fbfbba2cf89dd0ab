"""Experiment tracking behind one small interface (MLflow today). Only the main process of a
training tracks (the others open no run)."""
from __future__ import annotations

import json
import os
import tempfile
import tomllib
import warnings
from pathlib import Path
from typing import Optional

from pipeline import fs
from pipeline.config import flatten
from pipeline.provenance import PROJECT_ROOT

DEFAULT_STORE = PROJECT_ROOT / "runs" / "mlflow"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store under runs/mlflow/."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on training runs


class Tracker:
    """One MLflow run. ``run_id`` resumes an existing run (after ``--resume``); ``system_metrics``
    samples CPU, memory (and GPU, when MLflow can read it) into the run, with MLflow's own support."""

    def __init__(self, experiment: str, run_name: str, tags: dict[str, str], run_id: Optional[str] = None,
                 system_metrics: bool = False):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri())
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            location = None
            if tracking_uri().startswith("sqlite:///"):  # artifacts beside the database, not in the cwd
                db = Path(tracking_uri()[len("sqlite:///"):])
                location = (db.parent / "artifacts" / experiment).as_uri()
            try:
                mlflow.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_KIND)
            except mlflow.exceptions.MlflowException:
                if mlflow.get_experiment_by_name(experiment) is None:  # not another process creating it at once
                    raise
        elif any(found.tags.get(k) != v for k, v in EXPERIMENT_KIND.items()):  # made by an older version
            for k, v in EXPERIMENT_KIND.items():
                mlflow.tracking.MlflowClient().set_experiment_tag(found.experiment_id, k, v)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags,
                                    log_system_metrics=system_metrics)
        self.run_id = self.run.info.run_id
        self.tags = dict(tags)

    def log_dataset(self, name: str, source: str, sha256: str, context: str, rows: Optional[int] = None) -> None:
        """Record a data set the run used (the runs table's Dataset column, searchable lineage): its
        path or URI as source, its sha256 as digest (MLflow keeps 36 characters; the whole in a tag)."""

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        with warnings.catch_warnings():  # "can be interpreted in multiple ways": local paths are local
            warnings.simplefilter("ignore")
            source_obj = resolve_dataset_source(source)
        dataset = MetaDataset(source=source_obj, name=name, digest=sha256[:36])
        tags = {"sha256": sha256, **({"rows": str(rows)} if rows is not None else {})}
        for attempt in range(3):
            try:
                return self.mlflow.log_input(dataset, context=context, tags=tags)
            except self.mlflow.exceptions.MlflowException as e:
                # runs logging the same new data set at once (sweep children on one store): MLflow looks
                # for it, then inserts it, so all but one insert fail; again, they find the one inserted
                if "IntegrityError" not in str(e) or attempt == 2:
                    raise

    def register(self, model_uri: str, name: str, alias: Optional[str]) -> str:
        """Register ``model_uri`` as a new version of registered model ``name`` (with ``alias``);
        returns the version's URI, models:/<name>/<version>."""
        version = self.mlflow.register_model(model_uri, name, tags={"run_id": self.run_id})
        if alias:
            self.mlflow.tracking.MlflowClient().set_registered_model_alias(name, alias, version.version)
        self.mlflow.set_tag("registered_model", f"{name}/{version.version}")
        return f"models:/{name}/{version.version}"

    def log_params(self, params: dict) -> None:
        flat = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(params).items()}
        existing = self.mlflow.get_run(self.run_id).data.params
        new = {k: v for k, v in flat.items() if k not in existing}  # params are immutable: resume logs none twice
        items = list(new.items())
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i:i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        # run_id explicit: Spark calls a streaming query's foreachBatch from another thread, where
        # MLflow's (thread-local) active run is not set
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=self.run_id)

    def last_step(self, key: str) -> Optional[int]:
        history = self.mlflow.tracking.MlflowClient().get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=None)

    def log_dict(self, obj: dict, name: str) -> None:
        self.mlflow.log_dict(obj, name)

    def log_artifact(self, path: str, folder: Optional[str] = None) -> None:
        """Log a file (a local path or a URI the pipeline's filesystems read) into ``folder``."""

        if os.path.exists(path):
            self.mlflow.log_artifact(path, folder, run_id=self.run_id)
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, fs.name(path))
            Path(local).write_bytes(fs.read_bytes(path))
            self.mlflow.log_artifact(local, folder, run_id=self.run_id)

    def log_text(self, text: str, name: str) -> None:
        self.mlflow.log_text(text, name, run_id=self.run_id)

    def log_figure(self, figure, name: str) -> None:
        import matplotlib.pyplot as plt

        self.mlflow.log_figure(figure, name)
        plt.close(figure)  # pyplot keeps every figure alive until closed

    def log_model(self, spec: dict, module, example, name: str = "model") -> str:
        """Log the exported classifier as an MLflow model in this project's safe format
        (pipeline.model_io: architecture spec + state dict, no pickled code, no code shipped);
        returns its URI, runs:/<run id>/<name>."""
        import torch
        from mlflow.models import Model, infer_signature
        from mlflow.pyfunc import add_to_model

        from pipeline import model_io

        with tempfile.TemporaryDirectory() as tmp:
            model_io.save(tmp, spec, module)
            with torch.inference_mode():
                output = module(torch.as_tensor(example)).numpy()
            mlmodel = Model(artifact_path=name, run_id=self.run_id, signature=infer_signature(example, output))
            mlmodel.add_flavor("longtail_lab", spec=model_io.SPEC, weights=model_io.WEIGHTS,
                               architecture=spec["architecture"], format=model_io.FORMAT)
            add_to_model(mlmodel, loader_module="pipeline.model_io", data=".")
            mlmodel.save(os.path.join(tmp, "MLmodel"))
            self.mlflow.log_artifacts(tmp, name, run_id=self.run_id)
        return f"runs:/{self.run_id}/{name}"

    def end(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status)


def search_runs(experiment: str, filter_string: str = ""):
    """The runs of ``experiment`` matching an MLflow filter, as a pandas DataFrame (empty if the
    experiment does not exist yet)."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        return pd.DataFrame()
    return mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string)


def run_exists(run_id: str) -> bool:
    """Whether the tracking store has run ``run_id``, not deleted (a checkpoint may outlive its store)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    try:
        run = mlflow.tracking.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return run.info.lifecycle_stage == "active"  # a deleted run cannot be reopened


def load_json_artifact(run_id: str, path: str) -> dict:
    """A JSON artifact of a run (e.g. final_test_metrics.json)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")


def record_failure(experiment: str, run_name: str, tags: dict[str, str], error: str) -> str:
    """A FAILED run standing for work that failed before it could open its own run (bad config,
    missing input): the error is kept as a tag and as error.txt. Returns its run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.tracking.MlflowClient()  # not mlflow.start_run: the caller may have a run open
    run = client.create_run(client.get_experiment_by_name(experiment).experiment_id, run_name=run_name,
                            tags={**tags, "error": error[-1000:]})
    client.log_text(run.info.run_id, error, "error.txt")
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def mark_failed(run_id: str, error: str) -> None:
    """Tag a run with the error that ended it and, if its process died before saying so (it still
    reads RUNNING), end it as FAILED."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.tracking.MlflowClient()
    client.set_tag(run_id, "error", error[-1000:])
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, "FAILED")


def end_active_run(status: str) -> None:
    """End this process's open MLflow run, if any, with ``status`` (FAILED, KILLED)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.end_run(status)


def _requirements() -> list[str]:

    deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if d.split("==")[0] in ("torch", "torchvision", "numpy")]


def load_model(uri: str, map_location="cpu", store: Optional[str] = None):
    """A model logged by ``Tracker.log_model`` ('runs:/<id>/model' or 'models:/...') from the
    tracking ``store`` (default: ``tracking_uri()``): its files are downloaded and read by
    pipeline.model_io (weights only; nothing from the store is executed)."""
    import mlflow

    from pipeline import model_io

    mlflow.set_tracking_uri(store or tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        return model_io.load(local, map_location)
