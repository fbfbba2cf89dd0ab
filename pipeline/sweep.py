"""Studies over methods x imbalance ratios x seeds (``jobs/sweep.py --grid conf/sweeps/NAME.yaml``).

A grid names the ingest to carve long-tailed splits from (one per ratio, reused while its settings
hold), the config layers every child starts from, the axes, and overrides for some children. Each
child is one ``fit``: small ones run side by side as Spark tasks (one training per task, on the
executors), large ones one after another through TorchDistributor. One parent MLflow run groups the
children (MLflow's nesting tag); a child that fails is recorded as FAILED with its error and the
sweep goes on; a rerun skips the children that finished with the same resolved config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from pipeline import fs
from pipeline import compare
from pipeline.config import Config, ConfigError, apply_mapping, resolve, to_dict
from pipeline.launch import attempt, gpu_share, launch_fit, launch_tasks
from pipeline.longtail.splits import run_longtail, selection, split_params
from pipeline.provenance import PROJECT_ROOT
from pipeline.recipes import RECIPES, check_recipes
from pipeline.records import Manifest
from pipeline.tracking import Tracker, mark_failed, record_failure, search_runs

MATCH_KEYS = ("method", "imbalance_ratio", "seed")


@dataclass
class Grid:
    name: str = ""  # the sweep: the parent run's name and the children's "sweep" tag
    data: Optional[str] = None  # a jobs/ingest.py output; each ratio's splits are carved from it
    out: Optional[str] = None  # OUT/splits/r<rho>, OUT/compare.*; None: runs/sweeps/<name>
    config: list[str] = field(default_factory=list)  # config layers of every child (relative to the grid file)
    methods: list[str] = field(default_factory=list)  # recipes (conf/methods/<name>.yaml)
    imbalance_ratios: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    set: dict = field(default_factory=dict)  # config key -> value, for every child
    overrides: list[dict] = field(default_factory=list)  # {match: {method|imbalance_ratio|seed: v}, set: {...}}
    execution: Literal["auto", "tasks", "distributor"] = "auto"
    small_mb: int = 256  # auto: a one-process child whose labeled images (decoded) fit in this runs as a task
    threads_per_task: int = 1  # torch threads of each task (tasks share the executor's cores)
    # > 0: each task-run child asks Spark for 1/runs_per_gpu of a GPU (stage-level scheduling), so that
    # many children train side by side on each GPU, each pinned to the address Spark assigned it
    runs_per_gpu: int = 0

    def validate(self, origin: str) -> None:
        for key in ("name", "data", "methods", "imbalance_ratios", "seeds"):
            if not getattr(self, key):
                raise ConfigError(f"{origin}: sweep key '{key}' is required")
        check_recipes(self.methods, f"{origin}: methods: ")
        for i, o in enumerate(self.overrides):
            where = f"{origin}: overrides[{i}]"
            if set(o) != {"match", "set"} or not isinstance(o["match"], dict) or not isinstance(o["set"], dict):
                raise ConfigError(f"{where}: expected {{match: {{...}}, set: {{...}}}}, got {o!r}")
            bad = [k for k in o["match"] if k not in MATCH_KEYS]
            if bad:
                raise ConfigError(f"{where}.match: unknown key {bad[0]!r}; use {', '.join(MATCH_KEYS)}")
        if self.small_mb < 0 or self.threads_per_task < 1 or self.runs_per_gpu < 0:
            raise ConfigError(f"{origin}: small_mb and runs_per_gpu must be >= 0 and threads_per_task >= 1")
        if self.runs_per_gpu and self.execution == "distributor":
            raise ConfigError(f"{origin}: runs_per_gpu shares GPUs between Spark tasks; execution=distributor "
                              f"runs no child as a task (use tasks or auto)")


def load_grid(path: str) -> Grid:
    """Read and check a grid file; config layers are made relative to it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"sweep grid {path} does not exist (see conf/sweeps/)")
    data = yaml.safe_load(file.read_text()) or {}
    grid = Grid()
    apply_mapping(grid, data, origin=str(file))
    grid.validate(str(file))
    grid.config = [str((file.parent / c).resolve()) for c in grid.config]
    grid.out = grid.out or str(PROJECT_ROOT / "runs" / "sweeps" / grid.name)
    return grid


@dataclass
class Child:
    method: str
    imbalance_ratio: float
    seed: int
    cfg: Config
    config_sha: str  # of the resolved training config and its data (data_identity): a rerun skips a finished
    # child only if both are unchanged

    @property
    def key(self) -> str:
        return f"{self.method}/rho={self.imbalance_ratio:g}/seed={self.seed}"

    def tagged(self, sweep: str, parent_run_id: str) -> Config:
        """The child's config with the tags that tie its MLflow run to the sweep (and nest it)."""
        tags = {**self.cfg.train.tracking.tags, "sweep": sweep, "sweep_child": self.key, "sweep_config_sha": self.config_sha,
                "mlflow.parentRunId": parent_run_id}
        train = self.cfg.train
        return dataclasses.replace(self.cfg, train=dataclasses.replace(
            train, tracking=dataclasses.replace(train.tracking, tags=tags)))


def _raw(value: Any) -> str:
    """A YAML value as the text ``--set`` takes (strings as they are)."""
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return text[:-3].strip() if text.endswith("\n...") else text  # a scalar's document-end marker


def _matches(match: dict, method: str, ratio: float, seed: int) -> bool:
    values = {"method": method, "imbalance_ratio": ratio, "seed": seed}
    return all(float(v) == ratio if k == "imbalance_ratio" else str(v) == str(values[k]) for k, v in match.items())


def split_dir(grid: Grid, ratio: float) -> str:
    return fs.join(grid.out, "splits", f"r{ratio:g}")


def base_config(grid: Grid, extra_layers: list[str], cli: list[tuple[str, str]], ratio: float,
                method: Optional[str] = None, seed: Optional[int] = None) -> Config:
    """One child's resolved config. Layers, later wins: its recipe, the grid's config files, the
    job's --config files; then the grid's ``set``, matching ``overrides``, the job's --set, and
    finally the child's own axes (which nothing overrides)."""
    layers = ([str(RECIPES / f"{method}.yaml")] if method else []) + grid.config + extra_layers
    overrides = [(k, _raw(v)) for k, v in grid.set.items()]
    for o in grid.overrides:
        if method is not None and _matches(o["match"], method, ratio, seed):
            overrides += [(k, _raw(v)) for k, v in o["set"].items()]
    overrides += list(cli)
    overrides += [("longtail.data", grid.data), ("longtail.out", split_dir(grid, ratio)),
                  ("longtail.imbalance_ratio", _raw(ratio)), ("train.splits", split_dir(grid, ratio))]
    if method is not None:
        overrides += [("train.method", method), ("train.seed", str(seed))]
    try:
        return resolve(layers, overrides)
    except ConfigError as e:
        where = f"{method}/rho={ratio:g}/seed={seed}" if method else f"rho={ratio:g}"
        raise ConfigError(f"sweep {grid.name} ({where}): {e}") from None


def children(grid: Grid, extra_layers: list[str] = (), cli: list[tuple[str, str]] = ()) -> list[Child]:
    out = []
    for ratio in grid.imbalance_ratios:
        for method in grid.methods:
            for seed in grid.seeds:
                cfg = base_config(grid, list(extra_layers), list(cli), ratio, method, seed)
                sha = hashlib.sha256(json.dumps(to_dict(cfg.train), sort_keys=True).encode()).hexdigest()[:16]
                out.append(Child(method, ratio, seed, cfg, sha))
    return out


def data_identity(child: Child) -> Child:
    """The child with its config sha extended by its splits' and their ingest's sha256: after new
    splits (other long-tail settings, a new ingest) a finished child no longer counts as done."""
    manifest = Manifest.read(child.cfg.train.splits)
    data = {"manifest_sha256": manifest.manifest_sha256, "ingest_sha256": manifest.source.get("ingest_sha256")}
    sha = hashlib.sha256(json.dumps({"train": to_dict(child.cfg.train), "data": data},
                                    sort_keys=True).encode()).hexdigest()[:16]
    return dataclasses.replace(child, config_sha=sha)


def ensure_splits(spark, grid: Grid, extra_layers: list[str], cli: list[tuple[str, str]]) -> None:
    """Carve each ratio's splits, unless a previous run of the sweep already did with the same settings."""

    for ratio in grid.imbalance_ratios:
        cfg = base_config(grid, extra_layers, cli, ratio)
        if cfg.longtail.labeled_ids is not None and len(grid.imbalance_ratios) > 1:
            raise ConfigError(f"longtail.labeled_ids fixes the labeled split, so the {len(grid.imbalance_ratios)} "
                              f"imbalance_ratios of the grid would all train on the same images: give one ratio")
        if fs.exists(fs.join(split_dir(grid, ratio), Manifest.FILE)):
            have = Manifest.read(split_dir(grid, ratio))
            if (selection(have.params) == selection(split_params(cfg.longtail))
                    and have.source["data"] == fs.normalize(grid.data)):
                continue
        run_longtail(spark, dataclasses.replace(cfg, longtail=dataclasses.replace(cfg.longtail, overwrite=True)))


def is_small(child: Child, grid: Grid) -> bool:
    if grid.execution != "auto":
        return grid.execution == "tasks"
    t = child.cfg.train
    if t.runtime.num_processes > 1:
        return False
    manifest = Manifest.read(t.splits)
    shape = manifest.image_shapes[0]
    decoded = manifest.totals["labeled"] * shape["height"] * shape["width"] * shape["channels"]
    return decoded <= grid.small_mb * 2 ** 20
















def run_sweep(spark, grid: Grid, extra_layers: list[str] = (), cli: list[tuple[str, str]] = ()) -> dict:

    extra_layers, cli = list(extra_layers), list(cli)
    todo = children(grid, extra_layers, cli)
    experiment = todo[0].cfg.train.tracking.experiment
    if len({c.cfg.train.tracking.experiment for c in todo}) > 1:
        raise ConfigError(f"sweep {grid.name}: every child must log to one experiment (train.tracking.experiment)")
    share = gpu_share(spark, grid.runs_per_gpu) if grid.runs_per_gpu else None  # refused before any work
    ensure_splits(spark, grid, extra_layers, cli)
    # resolved again now that the splits exist: their data set's train settings are a layer of each child
    todo = [data_identity(c) for c in children(grid, extra_layers, cli)]

    parents = search_runs(experiment, f"tags.stage = 'sweep' and tags.sweep = '{grid.name}'")
    parent = Tracker(experiment, grid.name, {"stage": "sweep", "sweep": grid.name},
                     run_id=None if parents.empty else parents.sort_values("start_time").run_id.iloc[-1])
    parent.log_params({"sweep": {k: v for k, v in to_dict(grid).items() if k not in ("out",)}})
    parent.log_dict(to_dict(grid), "sweep.json")
    attempt_ms = int(time.time() * 1000)

    done = search_runs(experiment, f"tags.sweep = '{grid.name}' and attributes.status = 'FINISHED'")
    finished = set()
    if not done.empty and "tags.sweep_child" in done:
        finished = set(zip(done["tags.sweep_child"], done["tags.sweep_config_sha"]))
    skipped = [c for c in todo if (c.key, c.config_sha) in finished]
    todo = [c for c in todo if (c.key, c.config_sha) not in finished]
    try:
        outcomes = _run_children(spark, grid, todo, parent, share, len(skipped))
    except BaseException:  # Spark itself failed (a worker crashed hard) or the job was interrupted
        parent.end("FAILED")
        raise
    failed = _record_failures(grid, todo, outcomes, experiment, parent, attempt_ms)

    runs = compare.finished_runs(experiment, sweep=grid.name)
    files = compare.publish(runs, fs.join(grid.out, "compare"), parent) if not runs.empty else {}
    parent.log_metrics({"children": len(todo) + len(skipped), "children_finished": len(outcomes) - len(failed),
                        "children_failed": len(failed), "children_skipped": len(skipped)})
    parent.end("FAILED" if failed else "FINISHED")
    return {"sweep": grid.name, "experiment": experiment, "parent_run_id": parent.run_id,
            "children": len(todo) + len(skipped), "finished": [o["key"] for o in outcomes if o["status"] == "FINISHED"],
            "failed": {o["key"]: o["error"].strip().splitlines()[-1] for o in failed},
            "skipped": [c.key for c in skipped], "outcomes": outcomes, "compare": files}


def _run_children(spark, grid: Grid, todo: list[Child], parent, share, skipped: int) -> list[dict]:
    """Small children run as Spark tasks (one per core or GPU share), large ones one by one through
    TorchDistributor; each outcome says FINISHED or FAILED with the error, and one failure stops none."""
    as_task = {c.key: is_small(c, grid) for c in todo}
    small = [c for c in todo if as_task[c.key]]
    large = [c for c in todo if not as_task[c.key]]
    print(f"sweep {grid.name}: {len(todo)} children to run ({len(small)} as Spark tasks, {len(large)} through "
          f"TorchDistributor), {skipped} finished before", flush=True)
    outcomes = []
    if small:
        outcomes += launch_tasks(spark, [(c.key, c.tagged(grid.name, parent.run_id)) for c in small],
                                 grid.threads_per_task, grid.runs_per_gpu, share)
    for c in large:
        outcomes.append(attempt(c.key, lambda c=c: launch_fit(spark, c.tagged(grid.name, parent.run_id))))
    return outcomes


def _record_failures(grid: Grid, todo: list[Child], outcomes: list[dict], experiment: str, parent,
                     attempt_ms: int) -> list[dict]:
    """Every failed child's MLflow run is FAILED with its error: its own run if it opened one in this
    attempt (still RUNNING if its process was killed), else a run the sweep records for it."""

    by_key = {c.key: c for c in todo}
    failed = []
    for o in outcomes:
        if o["status"] == "FINISHED":
            continue
        c = by_key[o["key"]]
        own = search_runs(experiment, f"tags.sweep_child = '{c.key}' and tags.sweep_config_sha = '{c.config_sha}' "
                                      f"and attributes.start_time >= {attempt_ms}")
        if own.empty:
            o["run_id"] = record_failure(experiment, f"{grid.name}-{c.key}",
                                         c.tagged(grid.name, parent.run_id).train.tracking.tags, o["error"])
        else:
            o["run_id"] = own.run_id.iloc[0]
            mark_failed(o["run_id"], o["error"])
        failed.append(o)
    return failed


def summary(result: dict) -> str:
    lines = [f"sweep {result['sweep']} (experiment {result['experiment']}, parent run {result['parent_run_id']}): "
             f"{result['children']} children, {len(result['finished'])} finished now, "
             f"{len(result['skipped'])} skipped (finished before), {len(result['failed'])} failed"]
    for key, error in result["failed"].items():
        lines.append(f"  FAILED {key}: {error}")
    if result["compare"].get("markdown"):
        lines += ["", fs.read_text(result["compare"]["markdown"])]
    return "\n".join(lines)
