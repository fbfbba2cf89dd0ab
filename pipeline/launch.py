"""Launching a training function on Spark, behind one function: TorchDistributor today.

Local masters run torchrun on the driver (``local_mode``); a cluster runs the processes as barrier
tasks on the executors. TorchDistributor returns one rank's value, so the function must return the
same value on every rank (``fit`` broadcasts it)."""
from __future__ import annotations

from typing import Any, Callable

import torch


def launch(spark, fn: Callable[..., Any], *args, num_processes: int = 1, device: str = "auto") -> Any:
    from pyspark.ml.torch.distributor import TorchDistributor

    use_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_mode = spark.sparkContext.master.startswith("local")
    return TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu).run(fn, *args)


def launch_fit(spark, cfg) -> dict:
    """Run ``pipeline.train.fit`` on ``cfg.train.num_processes`` processes; paths are made absolute
    first, as the processes may run in another working directory (executors on a cluster)."""
    from pipeline.train import fit, with_absolute_paths

    cfg = with_absolute_paths(cfg)
    return launch(spark, fit, cfg, num_processes=cfg.train.num_processes, device=cfg.train.device)


def result_summary(result: dict) -> str:
    return "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items())
