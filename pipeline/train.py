"""The training loop: ``train_one_epoch``, ``evaluate``, ``fit``. One loop for every method: the
recipe (loss x class weights x schedule x sampler) comes from the config, and what a batch costs
from the registered objective of each phase (pipeline.objectives). ``fit`` runs as a plain process
or as one rank under torchrun/TorchDistributor (pipeline.distributed). The data it trains on come
from pipeline.loaders, the run around it (checkpoint, MLflow, the end of the run) from pipeline.run."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from models import Classifier, create_model
from pipeline import distributed
from pipeline.accel import Accel, accel_for, inference_batch
from pipeline.config import Config, ConfigError, TrainConfig, config_key, to_dict
from pipeline.data import Augment, ImageSet, eval_batches
from pipeline.errors import PipelineError
from pipeline.loaders import TrainData, train_data
from pipeline.losses import class_weight_at, create_loss, posthoc_adjust
from pipeline.metrics import evaluate_logits
from pipeline.objectives import OBJECTIVES, Objective, Phase, phases
from pipeline.records import Manifest
from pipeline.run import Run, checkpoint, finish, log_epochs, open_tracker, provenance_of, run_name, save_atomic
from pipeline.schedule import drw_epoch, lr_at
from pipeline.tracking import end_active_run


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


class TrainingDiverged(PipelineError):
    pass


def fit(cfg: Config) -> dict:
    """Train ``cfg.train`` on the labeled split of ``cfg.train.splits``; returns the same summary on
    every rank (TorchDistributor hands back only one rank's value)."""
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


def _fit(cfg: Config, ctx: distributed.Context) -> dict:
    t = cfg.train
    manifest = Manifest.read(t.splits)
    data = train_data(t, manifest, ctx)
    loss_fn = create_loss(data.loss_counts, t.loss).to(ctx.device)
    model = _model(t, data, loss_fn, ctx.device)
    plan = [(phase, e) for phase in phases(t) for e in range(phase.epochs)]  # (phase, epoch within it) per epoch
    name = run_name(cfg, manifest, data.semi)
    ckpt_path, state = checkpoint(cfg, name, manifest, ctx.device, data.semi)
    start = state["epoch"] + 1 if state else 0
    if state:
        model.load_state_dict(state["model"])
    provenance = provenance_of(t, manifest, data, ctx, model, state)
    tracker = open_tracker(cfg, manifest, name, state, data, provenance) if ctx.is_main else None
    run, run_id = (Run(cfg, manifest, data, ctx, ckpt_path, provenance, tracker),
                   distributed.broadcast_object(tracker.run_id if tracker else None))

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
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                         "history": history, "config": to_dict(cfg), "config_key": config_key(cfg),
                         "provenance": provenance, "run_id": run_id},
                        ckpt_path)
            log_epochs(tracker, history)  # after the checkpoint: a kill never logs an epoch twice
        distributed.barrier()

    if hasattr(data.loader, "close"):
        data.loader.close()
    final = evaluate(model, data.test, data.loader.augment, loss_fn, data.counts, cfg, ctx.device) if ctx.is_main else None
    return distributed.broadcast_object(finish(run, model, loss_fn, history, final) if ctx.is_main else None)


def evaluates(epoch: int, epochs: int, every: int) -> bool:
    """Whether epoch ``epoch`` (0-based) of ``epochs`` is evaluated: every ``every``-th, and the last."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


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


METRIC_KEYS = ("top1", "top5", "balanced_accuracy", "macro_f1", "ece", "many_accuracy", "medium_accuracy", "few_accuracy")


def _prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}_{k}": metrics[k] for k in METRIC_KEYS}


def _epoch_line(row: dict, epochs: int) -> str:
    line = (f"epoch {row['epoch'] + 1:>3}/{epochs} lr {row['lr']:.4g} loss {row['train_loss']:.3f} "
            f"train {row['train_top1']:.1%} test {row['test_top1']:.1%} "
            f"(many {row['test_many_accuracy']:.1%} medium {row['test_medium_accuracy']:.1%} "
            f"few {row['test_few_accuracy']:.1%}) {row['images_per_s']:.0f} img/s")
    return line.replace("nan%", "  - ")


