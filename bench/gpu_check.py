"""make gpu-check: the whole chain on this machine's GPU with few epochs, every stage required to run
there (``device=cuda`` fails instead of falling back to the CPU), in a few minutes:

    .venv/bin/python bench/gpu_check.py --archive ../shared/data/cifar10-jpeg.tar.gz [--epochs 2]

ingest -> long-tailed splits with an unlabeled pool -> ``ce`` training -> SSP rotation pre-training
-> SSP fine-tuning -> streaming pseudo-labels scored on the GPU -> semi-supervised training -> a
sweep of four children sharing one GPU (``runs_per_gpu: 4``) on a one-worker local cluster whose
GPUs conf/cluster/gpu-discovery.sh reports. Asserts that every training reports the GPU as its
device and bf16 as its precision, that the stream scored with ``pseudolabel.device=cuda``, and that
the four sweep children ran at the same time on one GPU address; prints seconds per stage.

``--digits --device cpu`` runs the same chain on the embedded digits on a machine without a GPU
(the sweep then shares a GPU address a stand-in discovery script reports, and trains on the CPU by
explicit choice): the check of this script itself."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.records import read_result  # noqa: E402  (each job's --result record)

SUBMIT = [str(Path(sys.executable).parent / "spark-submit"), "--driver-memory", "4g",
          "--driver-java-options", "-Dlog4j.configurationFile=conf/log4j2.properties"]


class Chain:
    def __init__(self, work: Path, config: str, epochs: int, device: str):
        self.work, self.config, self.epochs, self.device = work, config, epochs, device
        self.seconds: dict[str, float] = {}

    def job(self, stage: str, script: str, *args: str, master=("--master", "local[2]")) -> dict:
        result = self.work / f"{stage}.json"
        print(f"--- {stage}: jobs/{script} {' '.join(args)}", flush=True)
        started = time.time()
        subprocess.run([*SUBMIT, *master, f"jobs/{script}", "--config", self.config, *args, "--result", str(result)],
                       cwd=ROOT, check=True)
        self.seconds[stage] = time.time() - started
        return read_result(script.removesuffix(".py"), str(result)).to_dict()

    def train(self, stage: str, script: str, *args: str) -> dict:
        r = self.job(stage, script, "--epochs", str(self.epochs), "--set", f"train.runtime.device={self.device}",
                     "--set", f"train.runtime.run_dir={self.work / 'runs'}", "--experiment", "gpu-check", *args)
        want = "bf16" if self.device == "cuda" else "fp32"
        assert r["device"].startswith(self.device), f"{stage} trained on {r['device']}, not {self.device}"
        assert r["step"]["precision"] == want, f"{stage}: precision {r['step']['precision']}, expected {want}"
        print(f"{stage}: {r['device']}, {r['step']}, final test top-1 {100 * r['final_test_top1']:.2f}%", flush=True)
        return r


def sweep(chain: Chain, data: Path, splits_ratio: str) -> None:
    """Four children, one GPU, a local cluster of one worker that declares its GPUs."""
    if chain.device == "cuda":
        script = str(ROOT / "conf/cluster/gpu-discovery.sh")
        device = "auto"  # pinned children require the GPU Spark assigned them
    else:
        script = chain.work / "one-gpu.sh"
        script.write_text('#!/usr/bin/env bash\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
        script.chmod(0o755)
        device = "cpu"
    import yaml

    grid = {"name": "gpu-check", "data": str(data), "out": str(chain.work / "sweep"), "config": [str(ROOT / chain.config)],
            "methods": ["ce"], "imbalance_ratios": [float(splits_ratio)], "seeds": [0, 1, 2, 3],
            "execution": "tasks", "runs_per_gpu": 4,
            "set": {"train.epochs": chain.epochs, "train.tracking.experiment": "gpu-check-sweep", "train.runtime.device": device,
                    "train.runtime.run_dir": str(chain.work / "sweep-runs")}}
    path = chain.work / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    master = ("--master", "local-cluster[1,4,4096]", "--conf", "spark.worker.resource.gpu.amount=1",
              "--conf", f"spark.worker.resource.gpu.discoveryScript={script}",
              "--conf", "spark.executor.resource.gpu.amount=1",
              "--conf", f"spark.executor.resource.gpu.discoveryScript={script}")
    result = chain.work / "sweep.json"
    print("--- sweep: jobs/sweep.py, 4 children, runs_per_gpu 4", flush=True)
    started = time.time()
    subprocess.run([*SUBMIT, *master, "jobs/sweep.py", "--grid", str(path), "--result", str(result)], cwd=ROOT,
                   check=True)
    chain.seconds["sweep"] = time.time() - started
    outcomes = read_result("sweep", str(result)).outcomes
    assert {o["status"] for o in outcomes} == {"FINISHED"}, outcomes
    addresses = {o["gpu_address"] for o in outcomes}
    assert len(addresses) == 1, f"the children ran on {addresses}"
    overlap = max(o["started"] for o in outcomes) < min(o["ended"] for o in outcomes)
    assert overlap, "the four children did not run at the same time"
    print(f"sweep: 4 children at once on GPU address {addresses.pop()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", help="the CIFAR-10 archive (or --digits)")
    ap.add_argument("--digits", action="store_true", help="the embedded digits instead of CIFAR-10")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", default="runs/gpu-check", help="each check in a new folder under it")
    args = ap.parse_args()
    if not (args.archive or args.digits):
        ap.error("give --archive or --digits")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu-check: no CUDA device is visible here (use --device cpu --digits to check the script)")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for key in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        os.environ.setdefault(key, sys.executable)
    work = Path(args.work).resolve() / time.strftime("%Y%m%d-%H%M%S")  # every check starts afresh
    work.mkdir(parents=True)
    if args.digits:
        config, source, ratio = "conf/experiments/digits_lt10.yaml", ("--dataset", "digits"), "10"
        pool = ("--imbalance-ratio", ratio, "--labeled-max", "60", "--unlabeled-max", "60")
    else:
        config, source, ratio = "conf/experiments/cifar10_lt100_ssl.yaml", ("--source", os.path.abspath(args.archive)), "100"
        pool = ()
    chain, started = Chain(work, config, args.epochs, args.device), time.time()
    data, splits = work / "data", work / "splits"
    chain.job("ingest", "ingest.py", *source, "--out", str(data), "--overwrite")
    chain.job("splits", "longtail.py", "--data", str(data), "--out", str(splits), *pool, "--overwrite")
    base = chain.train("train", "train.py", "--splits", str(splits), "--method", "ce")
    pre = chain.train("pretrain", "pretrain.py", "--splits", str(splits))
    chain.train("ssp", "train.py", "--splits", str(splits), "--method", "ce", "--pretrained", pre["run_id"])
    labels = work / "pseudo-labels"
    chain.job("stream", "pseudolabel.py", "--model", base["run_id"], "--input", str(splits / "unlabeled"),
              "--out", str(labels), "--select", "all", "--set", f"pseudolabel.device={args.device}")
    print(f"stream: scored with pseudolabel.device={args.device}", flush=True)
    chain.train("semi", "train_semi.py", "--splits", str(splits), "--method", "ce", "--pseudo-labels", str(labels))
    sweep(chain, data, ratio)
    print("\nseconds per stage:", ", ".join(f"{k} {v:.0f}" for k, v in chain.seconds.items()))
    print(f"gpu check passed on {args.device}: {(time.time() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
