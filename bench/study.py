"""The CIFAR-10-LT study (rho = 100, ResNet-32) through the real jobs (spark-submit on local[2],
TorchDistributor, MLflow), at the reference schedule scaled to ``--epochs``:

1. ingest the JPEG copy of CIFAR-10, make the standard split (n_max 5,000: 12,406 labeled images) and
   train ``ce``, ``ldam_drw``, ``cb_focal`` and ``balanced_softmax`` on it (experiment
   ``study-cifar10-lt100-e<epochs>``);
2. the semi-supervised chain of Yang & Xu (2020) on the split of the semi-supervised benchmarks
   (N1 = 1,500 labeled and M1 = 3,000 unlabeled at the head, both rho = 100: CIFAR-10 has no images
   left for an unlabeled pool of the head class after the standard split): a ``ce`` base model, SSP
   rotation pre-training then ``ce`` fine-tuning, streaming pseudo-labels of the pool by the base
   model (policy ``all``, hidden-truth precision per class), and semi-supervised ``ce`` training on
   labeled + pseudo-labeled images (experiment ``study-cifar10-lt100-ssl-e<epochs>``).

    .venv/bin/python bench/study.py --archive ../shared/data/cifar10-jpeg.tar.gz --epochs 15   # or: make study

Each stage's result is kept under ``--work``/results, so a rerun skips finished stages (``--fresh``
starts over). The end prints both tables (jobs/compare.py), the pseudo-labels' precision per class,
and the minutes of every stage."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SUBMIT = [str(VENV_BIN / "spark-submit"), "--master", "local[2]", "--driver-memory", "4g",
          "--driver-java-options", "-Dlog4j.configurationFile=conf/log4j2.properties"]
METHODS = ("ce", "ldam_drw", "cb_focal", "balanced_softmax")
STANDARD, SEMI = "conf/experiments/cifar10_lt100.yaml", "conf/experiments/cifar10_lt100_ssl.yaml"


class Study:
    def __init__(self, work: Path, epochs: int):
        self.work, self.epochs, self.minutes = work, epochs, {}
        (work / "results").mkdir(parents=True, exist_ok=True)

    def job(self, stage: str, script: str, *args: str) -> dict:
        """Run ``spark-submit jobs/SCRIPT`` once; its --result JSON (kept for reruns) is returned."""
        result = self.work / "results" / f"{stage}.json"
        if result.exists():
            return json.loads(result.read_text())
        print(f"--- {stage}: jobs/{script} {' '.join(args)}", flush=True)
        started = time.time()
        subprocess.run([*SUBMIT, f"jobs/{script}", *args, "--result", str(result)], cwd=ROOT, check=True)
        self.minutes[stage] = (time.time() - started) / 60
        return json.loads(result.read_text())

    def train(self, stage: str, config: str, splits: Path, method: str, experiment: str, *extra: str) -> dict:
        return self.job(stage, "train.py", "--config", config, "--splits", str(splits), "--method", method,
                        "--epochs", str(self.epochs), "--experiment", experiment, *extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--work", default="runs/study")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--fresh", action="store_true", help="forget finished stages and start over")
    args = ap.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    for key in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        os.environ.setdefault(key, sys.executable)
    work = Path(args.work).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    study, started = Study(work, args.epochs), time.time()
    data, std, ssl = work / "cifar10", work / "cifar10-lt100", work / "cifar10-lt100-ssl"
    archive = os.path.abspath(args.archive)

    study.job("ingest", "ingest.py", "--config", STANDARD, "--source", archive, "--out", str(data), "--overwrite")
    study.job("splits", "longtail.py", "--config", STANDARD, "--data", str(data), "--out", str(std), "--overwrite")
    study.job("splits-ssl", "longtail.py", "--config", SEMI, "--data", str(data), "--out", str(ssl), "--overwrite")

    supervised = f"study-cifar10-lt100-e{args.epochs}"  # one experiment per budget: tables never mix budgets
    for method in args.methods.split(","):
        study.train(f"train-{method}", STANDARD, std, method, supervised)

    semi = f"study-cifar10-lt100-ssl-e{args.epochs}"
    base = study.train("ssl-base", SEMI, ssl, "ce", semi)
    pre = study.job("ssl-pretrain", "pretrain.py", "--config", SEMI, "--splits", str(ssl), "--epochs",
                    str(args.epochs), "--experiment", semi)
    study.train("ssl-ssp", SEMI, ssl, "ce", semi, "--pretrained", pre["run_id"])
    pseudo = work / "pseudo-labels"
    labels = study.job("ssl-pseudolabel", "pseudolabel.py", "--config", SEMI, "--model", base["run_id"],
                       "--input", str(ssl / "unlabeled"), "--out", str(pseudo), "--select", "all",
                       "--max-files-per-trigger", "1")
    study.job("ssl-semi", "train_semi.py", "--config", SEMI, "--splits", str(ssl), "--method", "ce",
              "--pseudo-labels", str(pseudo), "--epochs", str(args.epochs), "--experiment", semi)

    for experiment in (supervised, semi):
        print(f"\n{experiment}, {args.epochs} epochs (final epoch, %):")
        subprocess.run([sys.executable, "jobs/compare.py", "--experiment", experiment], cwd=ROOT, check=True)
    sys.path.insert(0, str(ROOT))
    from streaming.sinks import latest_balance

    rows = latest_balance(str(pseudo)).to_pylist()
    print(f"\npseudo-labels of the base model (policy all): {labels['selected']} kept, precision "
          f"{labels.get('precision', float('nan')):.3f}; per class (class: kept, precision):")
    print(", ".join(f"{r['class_name']}: {r['selected_count']}, "
                    f"{'-' if r['precision'] is None else format(r['precision'], '.2f')}" for r in rows))
    print("\nminutes per stage (this invocation):", ", ".join(f"{k} {v:.1f}" for k, v in study.minutes.items()))
    print(f"total {(time.time() - started) / 60:.1f} minutes")


if __name__ == "__main__":
    main()
