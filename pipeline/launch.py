"""Launching trainings on Spark, the one launcher: ``launch_fit`` runs one training on its processes
through TorchDistributor, ``launch_tasks`` runs many small ones side by side as Spark tasks (a sweep).

TorchDistributor: local masters run torchrun on the driver (``local_mode``); a cluster runs the
processes as barrier tasks on the executors. It returns one rank's value, so the function must
return the same value on every rank (``fit`` broadcasts it). Spark tasks: each training runs in a
Python process of its own inside its task (``run_in_task``), so a crash costs that training only,
optionally pinned to the GPU share Spark assigned the task."""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from pyspark import TaskContext
from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

from pipeline.config import Config, ConfigError, from_dict, to_dict, with_absolute_paths
from pipeline.distributed import wants_gpu
from pipeline.errors import PipelineError
from pipeline.tracking import tracking_uri
from pipeline.train import fit


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
    from pyspark.ml.torch.distributor import TorchDistributor  # its import starts torch's distributed stack

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
    cfg = with_absolute_paths(cfg)
    return launch(spark, fit, cfg, num_processes=cfg.train.runtime.num_processes, device=cfg.train.runtime.device)


def _die_with(parent: int):
    """For the child, before exec: Linux sends it SIGKILL when the process that started it dies
    (and it exits at once if that already happened between the fork and here)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)  # loaded before the fork
    except OSError:  # not Linux: the process group still ends it with a normal task end
        libc = None

    def set_up() -> None:
        if libc is not None:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    return set_up


def run_child(command: list[str], env: dict):
    """Run a training child in a process group of its own that ends with its Spark task: killed
    when the task's Python worker dies (Spark kills or retries the task) and, group and all, when
    the wait is interrupted. Returns the CompletedProcess (stdout and stderr together)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_die_with(os.getpid()))
    try:
        out, _ = proc.communicate()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out)


def task_gpus() -> list[str]:
    """The GPU addresses Spark assigned to the running task (none outside a task or without them)."""
    ctx = TaskContext.get()
    info = ctx.resources().get("gpu") if ctx is not None else None
    return list(info.addresses) if info is not None else []


def pinned(cfg: Config, gpus: list[str]) -> tuple[Config, dict]:
    """A child on the GPU(s) Spark assigned: only those visible to it (CUDA_VISIBLE_DEVICES), its
    run tagged with them, and ``train.runtime.device=auto`` made ``cuda``, so a child that cannot see its GPU
    fails saying so instead of training on the CPU (``train.runtime.device=cpu`` stays an explicit choice)."""
    address = ",".join(gpus)
    tracking, runtime = cfg.train.tracking, cfg.train.runtime
    t = dataclasses.replace(
        cfg.train, tracking=dataclasses.replace(tracking, tags={**tracking.tags, "gpu_address": address}),
        runtime=dataclasses.replace(runtime, device="cuda" if runtime.device == "auto" else runtime.device))
    return dataclasses.replace(cfg, train=t), {"CUDA_VISIBLE_DEVICES": address}


def run_in_task(item: tuple[str, Config], tracking: str, threads: int, runs_per_gpu: int = 0) -> dict:
    """One child inside a Spark task, trained in a Python process of its own: a crash (segfault,
    out-of-memory kill) costs that child only, and every training starts with fresh memory. Never
    raises: a failure comes back as an outcome, so the other tasks of the sweep go on. With
    ``runs_per_gpu`` the child is pinned to the task's GPU (``pinned``)."""
    key, cfg = item
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking,  # executors track where the driver does
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the library, shipped or installed
    started = time.time()
    gpus = task_gpus() if runs_per_gpu else []
    if runs_per_gpu and not gpus:
        return {"key": key, "status": "FAILED", "seconds": 0.0, "started": started, "ended": started,
                "error": f"runs_per_gpu={runs_per_gpu} but Spark assigned this task no GPU"}
    if gpus:
        cfg, pin = pinned(cfg, gpus)
        env.update(pin)
    with tempfile.TemporaryDirectory(prefix="sweep-child-") as tmp:
        spec, outcome = Path(tmp, "child.json"), Path(tmp, "outcome.json")
        spec.write_text(json.dumps({"key": key, "config": to_dict(cfg), "threads": threads}))
        proc = run_child([sys.executable, "-m", "pipeline.launch", str(spec), str(outcome)], env)
        sys.stdout.write(proc.stdout)  # the training's log, in the executor's output
        when = {"started": started, "ended": time.time(), **({"gpu_address": ",".join(gpus)} if gpus else {})}
        if outcome.exists():
            return {**json.loads(outcome.read_text()), **when}
    tail = "\n".join(proc.stdout.strip().splitlines()[-20:])
    how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with code {proc.returncode}"
    return {"key": key, "status": "FAILED", "seconds": time.time() - started, **when,
            "error": f"{tail}\nthe training process {how} before reporting a result"}


def gpu_share(spark, runs_per_gpu: int):
    """The stage-level resource profile of ``runs_per_gpu`` children per GPU; refuses, naming the
    settings, a session whose executors have no GPUs to share (their tasks would never be scheduled)."""
    amount = spark.sparkContext.getConf().get("spark.executor.resource.gpu.amount", "0")
    if float(amount) <= 0:
        raise ConfigError(f"runs_per_gpu={runs_per_gpu}: the executors have no GPUs to share "
                          f"(spark.executor.resource.gpu.amount={amount}); run on a cluster whose workers "
                          f"declare them (spark.worker.resource.gpu.amount and .discoveryScript, see "
                          f"conf/cluster/gpu-discovery.sh) and set spark.executor.resource.gpu.amount")
    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(1).resource("gpu", 1.0 / runs_per_gpu)).build


def attempt(key: str, run) -> dict:
    started = time.time()
    try:
        result = run()
        return {"key": key, "status": "FINISHED", "run_id": result["run_id"], "seconds": time.time() - started,
                "final_test_top1": result["final_test_top1"]}
    except Exception:
        return {"key": key, "status": "FAILED", "error": traceback.format_exc(), "seconds": time.time() - started}

def launch_tasks(spark, items: list[tuple[str, Config]], threads: int, runs_per_gpu: int = 0, share=None) -> list[dict]:
    """Train each (key, config) of ``items`` in a Spark task of its own, side by side (``share``: the
    resource profile of ``gpu_share``); one outcome per item, FINISHED or FAILED with its error."""
    uri = tracking_uri()
    rdd = spark.sparkContext.parallelize([(key, with_absolute_paths(cfg)) for key, cfg in items], len(items))
    if share is not None:
        rdd = rdd.withResources(share)
    return rdd.map(lambda item: run_in_task(item, uri, threads, runs_per_gpu)).collect()


def result_summary(result: dict) -> str:
    return "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items())


if __name__ == "__main__":  # python -m pipeline.launch CHILD.json OUTCOME.json: one training of run_in_task
    child = json.loads(Path(sys.argv[1]).read_text())
    import torch

    torch.set_num_threads(child["threads"])
    outcome = attempt(child["key"], lambda: fit(from_dict(child["config"], origin=sys.argv[1])))
    Path(sys.argv[2]).write_text(json.dumps(outcome))
