"""The run around the training loop: its name and tags, its checkpoint (keyed by settings and data,
resumed only with the same ones), its provenance, its MLflow run (opened, or reopened on a resume,
with parameters, inputs and every epoch), and the end of it (final figures, checkpoint, exported
model, report). pipeline/train.py keeps the loop and calls these."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from models import Classifier, PosthocAdjusted, Standardized
from pipeline import distributed, fs, model_io, plots, report
from pipeline.accel import accel_for
from pipeline.config import Config, ConfigError, NOT_IN_KEY, PATH_KEYS, TrainConfig, config_key, config_sha256, flatten, to_dict
from pipeline.data import Augment
from pipeline.loaders import TrainData
from pipeline.pretrained import load_backbone
from pipeline.provenance import git_commit
from pipeline.records import Manifest
from pipeline.tracking import Tracker, run_exists, tracking_uri


def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # unique: two writers never share a temp file
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill never leaves a half-written checkpoint


def run_name(cfg: Config, manifest: Manifest, semi: Optional[dict] = None) -> str:
    """dataset-r<ratio>-<method>[-ssp][-semi<round>-<policy>[-la][-ra]]-s<seed>: also the checkpoint folder
    (la: logit-adjusted pseudo loss, ra: RandAugment on the pseudo-labeled images)."""
    t = cfg.train
    parts = [manifest.dataset, f"r{manifest.imbalance_ratio:g}", t.method or t.loss.name]
    if t.pretrained and t.objective != "rotation":
        parts.append("ssp")
    if semi:
        parts.append(f"semi{semi['round'] if semi['round'] > 1 else ''}-{semi['policy']['name']}")
        parts += (["la"] if t.semi.loss == "logit_adjusted" else []) + (["ra"] if t.semi.augment == "randaugment" else [])
    return "-".join(parts + [f"s{t.seed}"])


def stage_of(cfg: Config) -> str:
    t = cfg.train
    return ("pretrain" if t.objective == "rotation" else "semi" if t.semi.pseudo_labels
            else "ssp" if t.pretrained else "base")


def run_tags(cfg: Config, manifest: Manifest) -> dict[str, str]:
    stage = stage_of(cfg)
    return {"dataset": manifest.dataset, "imbalance_ratio": f"{manifest.imbalance_ratio:g}",
            "method": cfg.train.method or cfg.train.loss.name, "stage": stage, "seed": str(cfg.train.seed),
            "model": cfg.train.model}


def checkpoint(cfg: Config, name: str, manifest: Manifest, device,
                semi: Optional[dict] = None) -> tuple[Path, Optional[dict]]:
    """(checkpoint path, state to resume from or None). The folder is keyed by the run's settings and
    data (``name``-<sha256 prefix of config_sha256, the manifest's and the pseudo-labels' sha256>), not
    by where the inputs lie, so runs that differ in any setting or data never share a checkpoint;
    ``--resume`` with changed settings is refused naming what changed; a checkpoint made before a
    setting existed resumes when the run leaves that setting at its default."""
    data = [manifest.manifest_sha256, semi["pseudo_ids_sha256"] if semi else None]
    digest = hashlib.sha256(json.dumps([config_sha256(cfg), *data]).encode()).hexdigest()[:10]
    path = Path(cfg.train.runtime.run_dir) / f"{name}-{digest}" / "checkpoint.pt"
    if not cfg.train.runtime.resume:
        return path, None
    if path.exists():
        return _resumed(path, device)
    key, others = config_key(cfg), 0
    for other in sorted(Path(cfg.train.runtime.run_dir).glob(f"{name}-*/checkpoint.pt"), key=lambda p: -p.stat().st_mtime):
        old = torch.load(other, map_location="cpu", weights_only=True)  # written by older code: other folder names
        if [old["provenance"]["manifest_sha256"], old["provenance"].get("semi", {}).get("pseudo_ids_sha256")] != data:
            others += 1  # a run of the same name on other data (re-made splits, another pool or stream)
            continue
        changed = changed_settings(old["config_key"], key)
        if changed:
            raise ConfigError(f"--resume: the checkpoint of run {name} ({other}) was made with other settings: "
                              + ", ".join(f"train.{k}={old['config_key'].get(k)!r} (now {key.get(k)!r})" for k in changed[:8])
                              + "; resume with the same settings, or drop --resume to start a new run")
        return _resumed(other, device)
    print(f"resume: no checkpoint of run {name} on these data in {cfg.train.runtime.run_dir}"
          + (f" ({others} on other splits or pseudo-labels, kept)" if others else "") + "; it starts at epoch 1", flush=True)
    return path, None


def changed_settings(old: dict, new: dict) -> list[str]:
    """The settings in which checkpoint key ``old`` and run key ``new`` differ. A setting the checkpoint
    does not know (added to the code since) counts as changed only if the run sets it off its default."""
    defaults, skip = flatten(to_dict(TrainConfig())), set(NOT_IN_KEY) | set(PATH_KEYS)  # data: by their sha256
    return sorted(k for k in set(old) | set(new) if k not in skip and old.get(k, defaults.get(k)) != new.get(k))


def _resumed(path: Path, device) -> tuple[Path, dict]:
    """(path, its state): the data it was trained on are those of the run, by the folder's digest or
    by the check of the fallback in ``_checkpoint``."""
    return path, torch.load(path, map_location=device, weights_only=True)


def provenance_of(t: TrainConfig, manifest: Manifest, data: TrainData, ctx: distributed.Context, model, state) -> dict:
    provenance = {**(state["provenance"] if state else {}),  # a resumed run keeps what it started from
                  "git_commit": git_commit(), "seed": t.seed, "manifest_sha256": manifest.manifest_sha256,
                  "splits": fs.normalize(t.splits), "world_size": ctx.world, "device": str(ctx.device),
                  "loader": data.loader_kind, "class_counts_trained": data.loss_counts,
                  "step": accel_for(t.runtime, ctx.device).describe(),  # the resolved precision, memory format, compile
                  "normalization": {"mean": data.loader.augment.mean.flatten().tolist(),
                                    "std": data.loader.augment.std.flatten().tolist()},
                  **({"semi": {k: v for k, v in data.semi.items() if k != "round"}} if data.semi else {})}
    if t.pretrained and not state:  # a resumed run has the pre-trained weights in its checkpoint already
            provenance.update(load_backbone(model, t.pretrained))
    return provenance


def _log_inputs(tracker, t: TrainConfig, manifest: Manifest, data: TrainData) -> None:
    """Lineage in MLflow: which split (and which pseudo-labels) trained the model, which evaluated it."""
    hashes = manifest.ids_sha256
    parts = ["labeled"] + (["unlabeled"] if t.objective == "rotation" and t.ssp.unlabeled else [])
    for part in parts:
        tracker.log_dataset(part, fs.join(fs.normalize(t.splits), part), hashes.get(part, manifest.manifest_sha256),
                            "training", manifest.totals.get(part))
    if data.semi:
        tracker.log_dataset("pseudo_labels", data.semi["pseudo_labels"], data.semi["pseudo_ids_sha256"], "training",
                            data.semi["pseudo_total"])
    tracker.log_dataset("test", fs.join(fs.normalize(t.splits), "test"), hashes.get("test", manifest.manifest_sha256),
                        "evaluation", manifest.totals.get("test"))


def log_epochs(tracker, history: list[dict]) -> None:
    """Log the epochs MLflow does not have yet (after a resume, those checkpointed before the kill)."""
    logged = tracker.last_step("train_loss")
    for row in history:
        if logged is None or row["epoch"] > logged:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch" and np.isfinite(v)}, step=row["epoch"])


def open_tracker(cfg: Config, manifest: Manifest, name: str, state: Optional[dict], data: TrainData, provenance: dict):
    """The run's MLflow run: opened with its parameters and inputs, or reopened by a resumed run."""
    tags = {**cfg.train.tracking.tags, **run_tags(cfg, manifest)}
    if cfg.train.pretrained:
        tags["pretrained"] = cfg.train.pretrained
    if semi := data.semi:  # the chain: base model -> pseudolabel run -> this run
        tags.update(parent_run_id=semi["pseudolabel_run_id"], base_run_id=semi["base_run_id"],
                    policy=semi["policy"]["name"], round=str(semi["round"]))
    run_id = state["run_id"] if state else None
    if run_id and not run_exists(run_id):  # the checkpoint outlived its tracking store (another machine, a new store)
        print(f"resume: MLflow run {run_id} of the checkpoint is not in {tracking_uri()}; the run continues from its "
              f"checkpoint in a new MLflow run (tag resumed_from_run_id), with every epoch so far", flush=True)
        tags["resumed_from_run_id"], run_id = run_id, None
    tracker = Tracker(cfg.train.tracking.experiment, name, tags, run_id=run_id,
                      system_metrics=cfg.train.tracking.system_metrics)
    if not run_id:
        tracker.log_params({**to_dict(cfg.train), "provenance": provenance})
        tracker.log_dict(to_dict(cfg), "config.json")
        tracker.log_dict(manifest.to_dict(), Manifest.FILE)
        _log_inputs(tracker, cfg.train, manifest, data)
    if state:  # what the checkpoint holds and the run does not (a kill, a new tracking store)
        log_epochs(tracker, state["history"])
    return tracker


class Run(NamedTuple):
    """A training run around its loop: settings, data, where it runs, its checkpoint, provenance and tracker."""
    cfg: Config
    manifest: Manifest
    data: TrainData
    ctx: distributed.Context
    ckpt_path: Path
    provenance: dict
    tracker: Optional[Tracker]  # on the main rank


def finish(run: Run, model, loss_fn, history: list[dict], final: dict) -> dict:
    """Log the final evaluation ``final``, figures, checkpoint, model and report; close the run;
    return its summary (the job's result)."""
    tracker, cfg, data, ctx, ckpt_path, manifest, provenance = (run.tracker, run.cfg, run.data, run.ctx, run.ckpt_path,
                                                                  run.manifest, run.provenance)
    test, augment, counts, names = data.test, data.loader.augment, data.counts, data.names
    best = max((h for h in history if np.isfinite(h["test_top1"])), key=lambda h: h["test_top1"])  # evaluated epochs
    summary = {"run_id": tracker.run_id, "final_test_top1": final["top1"], "final_test_top5": final["top5"],
               "final_test_many_accuracy": final["many_accuracy"],
               "final_test_medium_accuracy": final["medium_accuracy"],
               "final_test_few_accuracy": final["few_accuracy"], "final_test_balanced_accuracy": final["balanced_accuracy"],
               "final_test_macro_f1": final["macro_f1"], "final_test_ece": final["ece"],
               # reported for comparison with papers only: picking an epoch on the test split is not model selection
               "best_on_test_epoch_top1": best["test_top1"], "best_on_test_epoch": best["epoch"] + 1,
               "epochs_evaluated": int(sum(np.isfinite(h["test_top1"]) for h in history)),
               "train_minutes": sum(h.get("epoch_seconds", 0.0) for h in history) / 60,
               "epochs_timed": sum("epoch_seconds" in h for h in history),  # a checkpoint from before lacks them
               # robust to epochs slowed by other work on the machine: the run's pace, undisturbed
               "median_epoch_seconds": float(np.nanmedian([h.get("epoch_seconds", np.nan) for h in history] or [np.nan]))}
    tracker.log_metrics({k: v for k, v in summary.items() if k != "run_id" and np.isfinite(v)})
    summary["final_test_per_class_accuracy"] = final["per_class_accuracy"]
    summary.update(device=str(ctx.device), step=accel_for(cfg.train.runtime, ctx.device).describe(),  # where it ran
                   config_sha256=config_sha256(cfg), manifest_sha256=manifest.manifest_sha256,
                   git_commit=provenance["git_commit"], seed=cfg.train.seed, epochs=len(history),
                   checkpoint=str(ckpt_path))
    tracker.log_metrics({f"final_test_class_acc_{i}": a for i, a in enumerate(final["per_class_accuracy"])  # by index:
                         if np.isfinite(a)})  # valid for any class name (final_test_metrics.json maps them)
    final = {"class_names": names, "train_counts": counts, **final}
    tracker.log_dict(final, "final_test_metrics.json")
    figures = report.figures(final, history)
    pngs = {name: plots.png_bytes(fig) for name, fig in figures.items()}
    for name, fig in figures.items():
        tracker.log_figure(fig, f"{name}.png")
    tracker.log_artifact(str(ckpt_path), "checkpoint")
    spec, export = _exportable(model, loss_fn, augment, cfg, data)
    example = test.images[:2].float().div(255).numpy()  # batch of 2: the logged model is not tied to batch 1
    summary["model_uri"] = tracker.log_model(spec, export, example)
    if cfg.train.tracking.register:
        summary["registered_model"] = tracker.register(summary["model_uri"], cfg.train.tracking.register,
                                                       cfg.train.tracking.register_alias)
    tracker.log_text(report.render({
        "run_id": tracker.run_id, "run_name": ckpt_path.parent.name, "experiment": cfg.train.tracking.experiment,
        "tags": tracker.tags, "summary": summary, "provenance": provenance, "config": to_dict(cfg),
        "manifest": manifest, "final": final, "figures": pngs, "history": history,
        "model_uri": summary["model_uri"], "checkpoint": str(ckpt_path)}), "report.html")
    tracker.end()
    return summary


def _exportable(model: Classifier, loss_fn, augment: Augment, cfg: Config, data: TrainData):
    """(spec, module) of the deployable classifier: [0, 1] images in, logits out (post-hoc adjusted
    if configured); the module is what ``pipeline.model_io.build(spec)`` makes, with these weights."""
    t = cfg.train
    _, channels, height, width = data.sample.images.shape
    autoencoder = hasattr(model, "classifier")
    net = model.classifier() if autoencoder else model  # an autoencoder: the exported model drops the decoder
    net = net if not t.loss.posthoc_tau else PosthocAdjusted(net, loss_fn.log_prior.detach().cpu(), t.loss.posthoc_tau)
    mean, std = augment.mean.flatten().tolist(), augment.std.flatten().tolist()
    spec = model_io.spec_of(t.model, num_classes=len(data.names), in_channels=channels, image_size=max(height, width),
                            head=t.head, head_scale=t.loss.ldam_s, classifier_only=autoencoder, mean=mean, std=std,
                            posthoc_tau=t.loss.posthoc_tau)
    return spec, Standardized(net, mean, std).cpu().eval()
