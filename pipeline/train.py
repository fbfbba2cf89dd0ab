"""The training loop: ``train_one_epoch``, ``evaluate``, ``fit``. One loop for every method: the
recipe (loss x class weights x schedule x sampler) comes from the config, and what a batch costs
from the registered objective of each phase (pipeline.objectives). ``fit`` runs as a plain process
or as one rank under torchrun/TorchDistributor (pipeline.distributed)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from models import Classifier, create_model
from pipeline import distributed, fs
from pipeline.accel import Accel, accel_for, inference_batch
from pipeline.config import Config, ConfigError, TrainConfig, flatten, to_dict
from pipeline.data import (ROTATIONS, Augment, ImageSet, concat, eval_batches, load_split, random_rotations,
                           rotations, semi_loader)
from pipeline.loaders import choose_loader, make_loader
from pipeline.errors import PipelineError
from pipeline.longtail.profiles import ids_sha256
from pipeline.losses import class_weight_at, create_loss, posthoc_adjust
from pipeline.metrics import evaluate_logits
from pipeline.objectives import OBJECTIVES, Objective, Phase, phases
from pipeline.provenance import git_commit
from pipeline.records import Manifest
from pipeline.schedule import drw_epoch, lr_at


def train_one_epoch(model, objective: Objective, loss_fn, optimizer, loader, epoch: int,
                    class_weight: Optional[torch.Tensor], device, frozen_backbone: bool = False,
                    accel: Accel = Accel()) -> tuple[float, float, int]:
    """One pass over this process's shard; returns (summed loss, correct, images) for all-reduce.
    A loader yields (images, labels) or, semi-supervised, (images, labels, which rows are pseudo-labeled).
    The sums stay on the device until the epoch ends: no host sync per step."""
    model.train()
    if frozen_backbone:  # a frozen encoder keeps its batch-norm statistics too
        distributed.unwrap(model).backbone.eval()
    sums, seen = torch.zeros(2, dtype=torch.float64, device=device), 0  # (loss x images, correct), images
    for x, y, *is_pseudo in loader.epoch(epoch):
        x, y = accel.batch(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with accel.autocast(device):
            loss, logits, targets = objective(model, loss_fn, x, y, class_weight, *(m.to(device) for m in is_pseudo))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(targets)  # a shape: known without asking the device
        sums[0] += loss.detach().double() * len(targets)
        if logits is not None:
            sums[1] += (logits.argmax(1) == targets).sum()
    loss_sum, correct = sums.tolist()
    return loss_sum, correct, seen


@torch.no_grad()
def predict(model: torch.nn.Module, data: ImageSet, augment: Augment, batch: int, device,
            accel: Accel = Accel()) -> np.ndarray:
    model.eval()
    out = []
    for x, _ in eval_batches(data, augment, batch):
        with accel.autocast(device):
            out.append(model(accel.batch(x.to(device))).float())
    return torch.cat(out).cpu().numpy()


def evaluate(model, data: ImageSet, augment: Augment, loss_fn, train_counts, cfg, device) -> dict:
    accel = accel_for(cfg.train.runtime, torch.device(device))
    batch = inference_batch(cfg.train.data.eval_batch_size, device)
    logits = torch.from_numpy(predict(model, data, augment, batch, device, accel))
    logits = posthoc_adjust(logits, loss_fn.log_prior.cpu(), cfg.train.loss.posthoc_tau)
    return evaluate_logits(logits.numpy(), data.labels.cpu().numpy(), train_counts)


def _save_atomic(obj: dict, path: Path) -> None:
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


def with_absolute_paths(cfg: Config) -> Config:
    """A copy whose path-valued keys no longer depend on the driver's working directory: the
    processes may start elsewhere (TorchDistributor runs them in executor folders on a cluster)."""
    t = cfg.train
    pretrained = fs.normalize(t.pretrained) if t.pretrained and os.path.exists(t.pretrained) else t.pretrained
    train = dataclasses.replace(
        t, splits=fs.normalize(t.splits) if t.splits else t.splits, pretrained=pretrained,
        weights_path=fs.normalize(t.weights_path) if t.weights_path else None,
        runtime=dataclasses.replace(t.runtime, run_dir=fs.normalize(t.runtime.run_dir)),
        semi=dataclasses.replace(t.semi, pseudo_labels=fs.normalize(t.semi.pseudo_labels) if t.semi.pseudo_labels else None))
    return dataclasses.replace(cfg, train=train)


class TrainingDiverged(PipelineError):
    pass


def fit(cfg: Config) -> dict:
    """Train ``cfg.train`` on the labeled split of ``cfg.train.splits``; returns the same summary on
    every rank (TorchDistributor hands back only one rank's value)."""
    from pipeline.tracking import end_active_run

    ctx = distributed.setup(cfg.train.runtime.device)
    try:
        return _fit(cfg, ctx)
    except KeyboardInterrupt:
        end_active_run("KILLED")
        raise
    except BaseException:
        end_active_run("FAILED")  # the run says it failed instead of staying "running" for ever
        raise
    finally:
        distributed.teardown()


class TrainData(NamedTuple):
    names: list[str]  # class names (rotations for SSP)
    counts: list[int]  # labeled images per class: the shot groups of the metrics
    loss_counts: list[int]  # the class counts the model trains on (labeled + pseudo-labeled)
    loader_kind: str
    loader: object  # a MemoryLoader, MixedLoader or PetastormLoader
    sample: ImageSet  # (part of) the training images: shape and statistics
    test: ImageSet
    val: Optional[ImageSet]
    semi: Optional[dict]  # what a semi-supervised run records about its pseudo-labels


def _fit(cfg: Config, ctx: distributed.Context) -> dict:
    t = cfg.train
    manifest = Manifest.read(t.splits)
    data = _train_data(t, manifest, ctx)
    loss_fn = create_loss(data.loss_counts, t.loss).to(ctx.device)
    model = _model(t, data, loss_fn, ctx.device)
    plan = [(phase, e) for phase in phases(t) for e in range(phase.epochs)]  # (phase, epoch within it) per epoch
    name = run_name(cfg, manifest, data.semi)
    ckpt_path, state = _checkpoint(cfg, name, manifest, ctx.device, data.semi)
    start = state["epoch"] + 1 if state else 0
    if state:
        model.load_state_dict(state["model"])
    provenance = _provenance(t, manifest, data, ctx, model, state)
    tracker = _tracker(cfg, manifest, name, state, data, provenance) if ctx.is_main else None
    run_id = distributed.broadcast_object(tracker.run_id if tracker else None)

    history: list[dict] = state["history"] if state else []
    current, switch = None, drw_epoch(t.epochs, t.schedule)
    for epoch in range(start, len(plan)):
        phase, e = plan[epoch]
        if phase is not current:  # a new phase (or the one a resumed run stopped in): its optimizer and objective
            current, optimizer, ddp, objective = phase, *_enter(phase, model, loss_fn, t, ctx)
            if state and plan[state["epoch"]][0] is phase and epoch == start:
                optimizer.load_state_dict(state["optimizer"])
        lr = lr_at(e, phase.epochs, t.optim.lr, t.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        weight = class_weight_at(e, switch, data.loss_counts, t.loss) if objective.classifies else None
        objective.begin_epoch(epoch, ctx.rank)
        started = time.time()
        stats = train_one_epoch(ddp, objective, loss_fn, optimizer, data.loader, epoch, weight, ctx.device, phase.frozen,
                                accel_for(t.runtime, ctx.device))
        loss_sum, correct, seen = distributed.all_reduce_sum(list(stats), ctx.device)
        if not np.isfinite(loss_sum):  # every rank sees the same sum, so every rank stops here
            raise TrainingDiverged(f"epoch {epoch + 1}: the training loss is {loss_sum / seen} (diverged); "
                                   f"lower train.optim.lr (now {t.optim.lr:g}) or check the data")
        if ctx.is_main:
            row = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / seen,
                   "train_top1": correct / seen if objective.classifies else float("nan"),
                   "images_per_s": seen / (time.time() - started),
                   "class_weight_max": 1.0 if weight is None else float(weight.max())}  # shows when DRW starts
            row.update(_evaluation_row(model, data, loss_fn, cfg, ctx.device, evaluates(epoch, len(plan), t.eval_every)))
            row["epoch_seconds"] = time.time() - started  # training and evaluation: the run's minutes add them up
            history.append(row)
            print(_epoch_line(row, len(plan)), flush=True)
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                          "history": history, "config": to_dict(cfg), "config_key": config_key(cfg),
                          "provenance": provenance, "run_id": run_id},
                         ckpt_path)
            _log_epochs(tracker, history)  # after the checkpoint: a kill never logs an epoch twice
        distributed.barrier()

    if hasattr(data.loader, "close"):
        data.loader.close()
    result = None
    if ctx.is_main:
        result = _finish(tracker, cfg, model, data, loss_fn, history, ctx, ckpt_path, manifest, provenance)
    return distributed.broadcast_object(result)


# settings that do not change what a run computes (its weights): a resume may change them
NOT_IN_KEY = ("runtime.resume", "runtime.run_dir", "eval_every")


def evaluates(epoch: int, epochs: int, every: int) -> bool:
    """Whether epoch ``epoch`` (0-based) of ``epochs`` is evaluated: every ``every``-th, and the last."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


def config_key(cfg: Config) -> dict:
    """The resolved training settings a checkpoint belongs to (paths absolute), as dotted keys."""
    train = flatten(to_dict(with_absolute_paths(cfg).train))
    return {k: v for k, v in train.items() if k not in NOT_IN_KEY}


PATH_KEYS = ("splits", "weights_path", "semi.pseudo_labels")  # where the data lie: their content has its own sha256


def config_sha256(cfg: Config) -> str:
    """What a run computes, as one digest: its training settings without the paths of its inputs
    (the manifest's and pseudo-labels' sha256 say which data) or the settings of NOT_IN_KEY."""
    key = {k: v for k, v in config_key(cfg).items() if k not in PATH_KEYS}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _checkpoint(cfg: Config, name: str, manifest: Manifest, device,
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


def _train_data(t: TrainConfig, manifest: Manifest, ctx: distributed.Context) -> TrainData:
    if manifest.train_settings and ctx.is_main:  # said, not silent: they shape the run (config.resolve's data layer)
        print(f"train settings of the data set (ingest.train_settings of {t.splits}): "
              + ", ".join(f"{k}={v}" for k, v in flatten(manifest.train_settings).items())
              + "; a --config file or --set overrides them", flush=True)
    if t.objective == "rotation":
        return _rotation_data(t, manifest, ctx)
    counts, names = manifest.labeled_counts, manifest.class_names
    labeled_dir = fs.join(t.splits, "labeled")
    kind = choose_loader(labeled_dir, t)
    loader, sample = make_loader(kind, labeled_dir, counts, t, ctx.rank, ctx.world, ctx.device,
                                 normalization=manifest.normalization)
    test = load_split(fs.join(t.splits, "test"))
    val = load_split(fs.join(t.splits, "val")) if manifest.totals.get("val") else None
    if not t.semi.pseudo_labels:
        return TrainData(names, counts, counts, kind, loader, sample, test, val, None)
    if kind != "memory":
        raise ConfigError("train.semi.pseudo_labels: semi-supervised training needs train.data.loader=memory")
    pseudo, semi = _pseudo_labeled(t, manifest, ctx)
    loader = semi_loader(loader.data, pseudo, counts, t, loader.augment, ctx.rank, ctx.world)
    loss_counts = [a + b for a, b in zip(counts, semi["pseudo_counts"])]  # what the model is trained on
    return TrainData(names, counts, loss_counts, kind, loader, sample, test, val, semi)


def _model(t: TrainConfig, data: TrainData, loss_fn, device) -> Classifier:
    _, channels, height, width = data.sample.images.shape
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = create_model(t.model, num_classes=len(data.names), in_channels=channels, image_size=max(height, width),
                         head=t.head, head_scale=t.loss.ldam_s, weights_path=t.weights_path)
    if t.ae.mode != "classify" and not hasattr(model, "decoder"):
        raise ConfigError(f"train.ae.mode={t.ae.mode} needs an autoencoder model (unet_ae, mobilenetv2_ae), "
                          f"not {t.model}")
    loss_fn.prepare_head(model.head)
    return accel_for(t.runtime, device).model(model.to(device))


def _provenance(t: TrainConfig, manifest: Manifest, data: TrainData, ctx: distributed.Context, model, state) -> dict:
    provenance = {**(state["provenance"] if state else {}),  # a resumed run keeps what it started from
                  "git_commit": git_commit(), "seed": t.seed, "manifest_sha256": manifest.manifest_sha256,
                  "splits": fs.normalize(t.splits), "world_size": ctx.world, "device": str(ctx.device),
                  "loader": data.loader_kind, "class_counts_trained": data.loss_counts,
                  "step": accel_for(t.runtime, ctx.device).describe(),  # the resolved precision, memory format, compile
                  "normalization": {"mean": data.loader.augment.mean.flatten().tolist(),
                                    "std": data.loader.augment.std.flatten().tolist()},
                  **({"semi": {k: v for k, v in data.semi.items() if k != "round"}} if data.semi else {})}
    if t.pretrained and not state:  # a resumed run has the pre-trained weights in its checkpoint already
        from pipeline.pretrained import load_backbone

        provenance.update(load_backbone(model, t.pretrained))
    return provenance


def _enter(phase: Phase, model, loss_fn, t: TrainConfig, ctx: distributed.Context):
    """(optimizer, the model as this phase trains it, objective) of ``phase``."""
    optimizer = _optimizer(model, loss_fn, t, frozen=phase.frozen)
    ddp = distributed.wrap(model, ctx, find_unused=hasattr(model, "decoder"))
    return optimizer, accel_for(t.runtime, ctx.device).step_model(ddp), OBJECTIVES.get(phase.objective)(t)


def _evaluation_row(model, data: TrainData, loss_fn, cfg: Config, device, now: bool = True) -> dict:
    """The test (and val) metrics of the epoch; NaN (not logged) when it is ``not now`` (train.eval_every)."""
    if not now:
        return dict.fromkeys(_evaluation_keys(data), float("nan"))
    augment = data.loader.augment
    row = _prefixed("test", evaluate(model, data.test, augment, loss_fn, data.counts, cfg, device))
    if data.val is not None:
        row.update(_prefixed("val", evaluate(model, data.val, augment, loss_fn, data.counts, cfg, device)))
    return row


def _evaluation_keys(data: TrainData) -> list[str]:
    return [f"{split}_{k}" for split in ("test", "val") if split == "test" or data.val is not None for k in METRIC_KEYS]


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


def _pseudo_labeled(t: TrainConfig, manifest: Manifest, ctx: distributed.Context) -> tuple[ImageSet, dict]:
    """The pseudo-labeled images the policy kept, and what the run records about them."""
    from pipeline.pseudolabel.store import selected_pseudo_labels

    ids, labels, info = selected_pseudo_labels(t.semi.pseudo_labels)
    if info.class_names != manifest.class_names:
        raise ConfigError(f"train.semi.pseudo_labels: {t.semi.pseudo_labels} labels classes {info.class_names[:5]}..., "
                          f"the splits have {manifest.class_names[:5]}...")
    pool = load_split(info.input)
    rows, ids, labels = in_pool_order(ids, labels, pool.ids, info.input)
    pseudo = ImageSet(pool.images[rows], torch.from_numpy(labels), ids).to(ctx.device)
    pseudo_counts = np.bincount(labels, minlength=len(manifest.class_names)).tolist()
    return pseudo, {"pseudo_labels": fs.normalize(t.semi.pseudo_labels), "pseudolabel_run_id": info.run_id,
                    "base_run_id": info.model_run_id, "policy": info.policy, "pseudo_counts": pseudo_counts,
                    "pseudo_total": len(ids), "semi_batches": t.semi.batches, "round": info.round + 1,
                    "pseudo_ids_sha256": ids_sha256(ids)}


def in_pool_order(ids: list[str], labels: np.ndarray, pool_ids: list[str], pool: str
                  ) -> tuple[torch.Tensor, list[str], np.ndarray]:
    """(rows of the pool, ids, labels) of the pseudo-labels, in the pool's row order: the stream's
    scoring order depends on how it cut micro-batches (files per trigger, a restart, files written in
    the same second), the training must not."""
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:  # the pool reached the stream twice (a file copied into its inbox again)
        raise ConfigError(f"train.semi.pseudo_labels: {len(repeated)} ids are pseudo-labelled more than once, e.g. "
                          f"{repeated[:3]}")
    where = {i: n for n, i in enumerate(pool_ids)}
    missing = [i for i in ids if i not in where]
    if missing:
        raise ConfigError(f"train.semi.pseudo_labels: {len(missing)} pseudo-labeled ids are not in {pool}, "
                          f"e.g. {missing[:3]}")
    rows = np.array([where[i] for i in ids], dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    return torch.from_numpy(rows[order]), [ids[k] for k in order], np.asarray(labels)[order]


def _rotation_data(t: TrainConfig, manifest: Manifest, ctx: distributed.Context) -> TrainData:
    """SSP data: the labeled split's images (and the pool's, if asked) without their labels; the
    test images rotated as in training (each once at a seeded random rotation, or all four), to
    measure rotation accuracy."""
    parts = ["labeled"] + (["unlabeled"] if t.ssp.unlabeled else [])
    images = concat([load_split(fs.join(t.splits, p)) for p in parts])
    unlabeled = ImageSet(images.images, torch.zeros(len(images), dtype=torch.int64), images.ids)
    loader, sample = make_loader("memory", None, [len(unlabeled)], t, ctx.rank, ctx.world, ctx.device,
                                 data=unlabeled, normalization=manifest.normalization)  # one pseudo-class
    test = load_split(fs.join(t.splits, "test"))
    if t.ssp.rotations == "random":
        x, y = random_rotations(test.images, torch.Generator().manual_seed(t.seed))
        test = ImageSet(x, y, test.ids)
    else:
        x, y = rotations(test.images)
        test = ImageSet(x, y, test.ids * len(ROTATIONS))
    counts = [len(unlabeled)] * len(ROTATIONS)  # every rotation is equally frequent
    return TrainData(list(ROTATIONS), counts, counts, "memory", loader, sample, test, None, None)


def _optimizer(model, loss_fn, t: TrainConfig, frozen: bool) -> torch.optim.Optimizer:
    """SGD on every parameter, or on the head alone with the backbone frozen; the head's bias
    without weight decay where the loss asks (Cui et al.'s sigmoid losses)."""
    if frozen:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    params = list(model.head.parameters() if frozen else model.parameters())
    bias = getattr(model.head, "bias", None)
    if loss_fn.decay_head_bias or bias is None:
        groups = [{"params": params}]
    else:
        groups = [{"params": [p for p in params if p is not bias]}, {"params": [bias], "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=t.optim.lr, momentum=t.optim.momentum, weight_decay=t.optim.weight_decay)


def _log_epochs(tracker, history: list[dict]) -> None:
    """Log the epochs MLflow does not have yet (after a resume, those checkpointed before the kill)."""
    logged = tracker.last_step("train_loss")
    for row in history:
        if logged is None or row["epoch"] > logged:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch" and np.isfinite(v)}, step=row["epoch"])


def _tracker(cfg: Config, manifest: Manifest, name: str, state: Optional[dict], data: TrainData, provenance: dict):
    """The run's MLflow run: opened with its parameters and inputs, or reopened by a resumed run."""
    from pipeline.tracking import Tracker, run_exists, tracking_uri

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
        _log_epochs(tracker, state["history"])
    return tracker


METRIC_KEYS = ("top1", "top5", "balanced_accuracy", "macro_f1", "ece", "many_accuracy", "medium_accuracy", "few_accuracy")


def _prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}_{k}": metrics[k] for k in METRIC_KEYS}


def _epoch_line(row: dict, epochs: int) -> str:
    line = (f"epoch {row['epoch'] + 1:>3}/{epochs} lr {row['lr']:.4g} loss {row['train_loss']:.3f} "
            f"train {row['train_top1']:.1%} test {row['test_top1']:.1%} "
            f"(many {row['test_many_accuracy']:.1%} medium {row['test_medium_accuracy']:.1%} "
            f"few {row['test_few_accuracy']:.1%}) {row['images_per_s']:.0f} img/s")
    return line.replace("nan%", "  - ")


def _finish(tracker, cfg, model, data: TrainData, loss_fn, history, ctx, ckpt_path, manifest, provenance) -> dict:
    from pipeline import plots, report

    test, augment, counts, names = data.test, data.loader.augment, data.counts, data.names
    final = evaluate(model, test, augment, loss_fn, counts, cfg, ctx.device)
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
    from models import PosthocAdjusted, Standardized
    from pipeline import model_io

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
