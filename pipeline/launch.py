"""Launching a training function on Spark, behind one function: TorchDistributor today.

Local masters run torchrun on the driver (``local_mode``); a cluster runs the processes as barrier
tasks on the executors. TorchDistributor returns one rank's value, so the function must return the
same value on every rank (``fit`` broadcasts it)."""
from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline.errors import PipelineError


class LaunchError(PipelineError):
    pass


def _reporting_errors(fn: Callable[..., Any], errors: str, *args) -> Any:
    """Run ``fn`` in a launched process; if it raises, leave the traceback where the launcher can
    read it (TorchDistributor itself only says that training failed)."""
    try:
        return fn(*args)
    except BaseException:
        try:
            Path(errors, f"rank{os.environ.get('RANK', '0')}.txt").write_text(traceback.format_exc())
        except OSError:  # e.g. an executor that does not share the driver's disk
            pass
        raise


def launch(spark, fn: Callable[..., Any], *args, num_processes: int = 1, device: str = "auto") -> Any:
    from pyspark.ml.torch.distributor import TorchDistributor

    use_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_mode = spark.sparkContext.master.startswith("local")
    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu)
    with tempfile.TemporaryDirectory(prefix="launch-errors-") as errors:
        try:
            return distributor.run(_reporting_errors, fn, errors, *args)
        except RuntimeError as e:
            reports = sorted(Path(errors).glob("rank*.txt"))
            if not reports:
                raise
            cause = reports[0].read_text().strip().splitlines()[-1]  # "SomeError: what went wrong"
            raise LaunchError(f"training failed in {reports[0].stem.replace('rank', 'rank ')}: {cause}") from e


def launch_fit(spark, cfg) -> dict:
    """Run ``pipeline.train.fit`` on ``cfg.train.num_processes`` processes; paths are made absolute
    first, as the processes may run in another working directory (executors on a cluster)."""
    from pipeline.train import fit, with_absolute_paths

    cfg = with_absolute_paths(cfg)
    return launch(spark, fit, cfg, num_processes=cfg.train.num_processes, device=cfg.train.device)


def launch_semi(spark, cfg) -> dict:
    """Semi-supervised training on ``cfg.train.pseudo_labels``; with ``self_training_rounds`` > 1,
    each round's model re-labels the pool (the same policy, a new output beside the first) and the
    next round trains on those labels. Every round is its own MLflow run, tagged with its parent.
    Finished steps are recorded (``run_dir/semi-rounds-<config sha>.json``), so the same command
    run again continues where it stopped instead of paying for finished rounds again."""
    import dataclasses
    import hashlib
    import json

    from pipeline import fs
    from pipeline.config import to_dict
    from pipeline.train import config_key
    from streaming.pseudolabel import run_pseudolabel
    from streaming.sinks import read_stream_info

    key = {"train": config_key(cfg), "pseudolabel": to_dict(cfg.pseudolabel)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    record = Path(fs.normalize(cfg.train.run_dir)) / f"semi-rounds-{digest}.json"
    done = json.loads(record.read_text())["rounds"] if record.exists() else []

    def save(rounds):
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"config": key, "rounds": rounds}, indent=2, default=str))
        os.replace(tmp, record)

    rounds, result = [], {}
    for round_ in range(1, cfg.train.self_training_rounds + 1):
        step = done[round_ - 1] if len(done) >= round_ else None
        if step is None:  # this round's training has not finished yet
            result = launch_fit(spark, cfg)
            step = {"round": round_, "run_id": result["run_id"], "pseudo_labels": cfg.train.pseudo_labels,
                    "final_test_top1": result["final_test_top1"], "result": result}
            save(rounds + [step])
        result = step["result"]
        rounds.append(step)
        if round_ == cfg.train.self_training_rounds:
            break
        out = f"{cfg.train.pseudo_labels.rstrip('/')}-round{round_ + 1}"
        if "next_pseudolabel_run_id" not in step:  # the re-labelling resumes from its own stream checkpoint
            info = read_stream_info(cfg.train.pseudo_labels)
            policy = info["policy"]
            relabel = dataclasses.replace(cfg.pseudolabel, model=step["run_id"], input=info["input"], out=out,
                                          checkpoint=None, truth=info["truth"], trigger="available-now",
                                          select=policy["name"], **{k: v for k, v in policy.items() if k != "name"})
            labeled = run_pseudolabel(spark, dataclasses.replace(cfg, pseudolabel=relabel))
            step["next_pseudolabel_run_id"] = labeled["run_id"]
            save(rounds)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, pseudo_labels=out))
    summary = [{k: v for k, v in r.items() if k != "result"} for r in rounds]
    return {**result, "rounds": summary} if len(rounds) > 1 else result


def result_summary(result: dict) -> str:
    return "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items())
