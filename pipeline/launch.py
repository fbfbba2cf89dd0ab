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

from pipeline.distributed import wants_gpu
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

    use_gpu = wants_gpu(device)
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
    """Run ``pipeline.train.fit`` on ``cfg.train.runtime.num_processes`` processes; paths are made absolute
    first, as the processes may run in another working directory (executors on a cluster)."""
    from pipeline.train import fit, with_absolute_paths

    cfg = with_absolute_paths(cfg)
    return launch(spark, fit, cfg, num_processes=cfg.train.runtime.num_processes, device=cfg.train.runtime.device)


def result_summary(result: dict) -> str:
    return "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items())
