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
