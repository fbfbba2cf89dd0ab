"""Benchmark: the reference protocol on CIFAR-10-LT (rho = 100, ResNet-32, 200 epochs) from the JPEG
copy in ../shared/data, one run per method, timed, next to the reference implementation's
accuracy on the same copy. Meant for a GPU (~10 min per run on an H100); on a CPU use --epochs to
check the wiring only.

    .venv/bin/python bench/cifar10_lt.py --archive ../shared/data/cifar10-jpeg.tar.gz [--methods ce,ldam_drw]"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import ensure_splits  # noqa: E402  (bench/train.py: make the splits once)

from pipeline.config import resolve  # noqa: E402
from pipeline.train import fit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "conf/experiments/cifar10_lt100.yaml"  # CIFAR-10-LT: the reference normalisation constants
# The reference implementation (Yang & Xu 2020 / Cao et al. 2019 code) on this JPEG copy, from
# ../shared/data/README.md: CE final epoch; LDAM-DRW best epoch over its first 193 epochs.
REFERENCE = {"ce": "64.8 (final)", "ldam_drw": "72.8 (best epoch)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--work", default="runs/bench")
    ap.add_argument("--methods", default="ce,ldam_drw")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    splits = ensure_splits(args.archive, Path(args.work))
    rows = []
    for method in args.methods.split(","):
        cfg = resolve([str(ROOT / "conf/methods" / f"{method}.yaml"), str(ROOT / EXPERIMENT)], [
            ("train.splits", str(splits)), ("train.method", method), ("train.epochs", str(args.epochs)),
            ("train.seed", str(args.seed)), ("train.tracking.experiment", "bench-cifar10-lt100"),
            ("train.runtime.run_dir", str(Path(args.work) / "runs"))])
        started = time.time()
        result = fit(cfg)
        rows.append((method, time.time() - started, result))
    print(f"\nCIFAR-10-LT rho=100, ResNet-32, {args.epochs} epochs, seed {args.seed}")
    print("| method | minutes | final top-1 | many | medium | few | best epoch on test (papers only) | reference on this copy |")
    print("|---|---|---|---|---|---|---|---|")
    for method, seconds, r in rows:
        print(f"| {method} | {seconds / 60:.1f} | {100 * r['final_test_top1']:.1f} | "
              f"{100 * r['final_test_many_accuracy']:.1f} | {100 * r['final_test_medium_accuracy']:.1f} | "
              f"{100 * r['final_test_few_accuracy']:.1f} | {100 * r['best_on_test_epoch_top1']:.1f} | "
              f"{REFERENCE.get(method, '-')} |")


if __name__ == "__main__":
    main()
