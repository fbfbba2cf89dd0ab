"""Benchmark: this project against the paper's public code at the same epoch budget, on the same
machine, over several seeds: CIFAR-10-LT rho = 100 from the JPEG copy in ../shared/data, ResNet-32,
batch 128, the reference schedule scaled to ``--epochs``.

    .venv/bin/python bench/equal_budget.py --archive ../shared/data/cifar10-jpeg.tar.gz \\
        --reference ../shared/reference/imbalanced-semi-self --methods ce,ldam_drw --epochs 15 --seeds 0,1,2

``ref`` runs the reference ``train.py`` unmodified, through the reference folder's own CPU runner
(``run_ref.py``: its schedule scaled exactly as this project scales it), on the CIFAR batches its
``convert.py`` makes from the same archive; the folder is copied under ``--work`` because the runner
writes beside itself. ``ours`` runs ``pipeline.train.fit`` with the recipe of the same name. Each
finished run is appended to ``WORK/results.jsonl``, so an interrupted study resumes where it stopped;
the table (mean +- std of the final-epoch top-1 and per-class accuracy) is printed at the end.
Both implementations train one run at a time on the whole machine: never run two of these at once."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import ensure_splits  # noqa: E402  (bench/train.py: make the splits once)

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "conf/experiments/cifar10_lt100.yaml"  # CIFAR-10-LT: the reference normalisation constants
# A recipe of this project -> the reference train.py's flags for the same method.
REFERENCE_FLAGS = {
    "ce": ["--loss_type", "CE", "--train_rule", "None"],
    "ce_drw": ["--loss_type", "CE", "--train_rule", "DRW"],
    "ldam": ["--loss_type", "LDAM", "--train_rule", "None"],
    "ldam_drw": ["--loss_type", "LDAM", "--train_rule", "DRW"],
    "focal": ["--loss_type", "Focal", "--train_rule", "None"],
    "reweight_cb": ["--loss_type", "CE", "--train_rule", "Reweight"],
    "resample_cb": ["--loss_type", "CE", "--train_rule", "Resample"],
}
# run_ref.py patches CUDA away for the model and tensors; LDAMLoss also builds a torch.cuda.FloatTensor.
_CPU_SHIM = ("import runpy, sys, torch; torch.cuda.FloatTensor = torch.FloatTensor; "
             "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
_FINAL = re.compile(r"val Results: Prec@1 ([0-9.]+)")
_CLASSES = re.compile(r"val Class Accuracy: \[([^\]]*)\]")


def reference_run(reference: Path, work: Path, archive: str, method: str, epochs: int, seed: int) -> dict:
    ref = work / "reference"
    if not (ref / "run_ref.py").exists():
        shutil.copytree(reference, ref, ignore=shutil.ignore_patterns("refdata", "log", "checkpoint"))
    if not (ref / "refdata" / "cifar-10-batches-py" / "test_batch").exists():
        subprocess.run([sys.executable, "convert.py", os.path.abspath(archive), "refdata"], cwd=ref, check=True)
    log = work / "logs" / f"ref-{method}-e{epochs}-s{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", _CPU_SHIM, "run_ref.py", "--dataset", "cifar10", "--data_path", "refdata",
           *REFERENCE_FLAGS[method], "--epochs", str(epochs), "-j", "2", "--seed", str(seed),
           "--exp_str", f"e{epochs}-s{seed}"]
    with open(log, "w") as out:
        subprocess.run(cmd, cwd=ref, env={**os.environ, "REF_EPOCHS": str(epochs)}, stdout=out,
                       stderr=subprocess.STDOUT, check=True)
    text = log.read_text()
    finals, classes = _FINAL.findall(text), _CLASSES.findall(text)
    if len(finals) != epochs:
        raise RuntimeError(f"{log}: {len(finals)} evaluated epochs, expected {epochs}")
    return {"top1": float(finals[-1]) / 100, "per_class": [float(v) for v in classes[-1].split(",")],
            "log": str(log)}


def our_run(splits: Path, work: Path, method: str, epochs: int, seed: int) -> dict:
    from pipeline.config import resolve
    from pipeline.train import fit

    cfg = resolve([str(ROOT / "conf/methods" / f"{method}.yaml"), str(ROOT / EXPERIMENT)], [
        ("train.splits", str(splits)), ("train.method", method), ("train.epochs", str(epochs)),
        ("train.seed", str(seed)), ("train.tracking.experiment", "bench-equal-budget"),
        ("train.runtime.run_dir", str(work / "runs"))])
    result = fit(cfg)
    return {"top1": result["final_test_top1"], "per_class": result["final_test_per_class_accuracy"],
            "run_id": result["run_id"]}


def _mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def welch(a: list[float], b: list[float]) -> str:
    """Welch's t-test of two sets of final accuracies: the difference of the means and its p-value."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return "-"
    result = stats.ttest_ind(a, b, equal_var=False)
    return f"{100 * (statistics.mean(b) - statistics.mean(a)):+.1f} (p = {result.pvalue:.2f})"


def table(rows: list[dict], epochs: int) -> str:
    lines = [f"CIFAR-10-LT rho=100, ResNet-32, {epochs} epochs (final epoch; mean ± std over seeds)",
             "| method | code | seeds | top-1 | per class (airplane .. truck) | minutes per run | "
             "this project - reference (Welch) |", "|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        top1 = {impl: [r["top1"] for r in rows if r["method"] == method and r["impl"] == impl] for impl in ("ref", "ours")}
        for impl in ("ref", "ours"):
            runs = [r for r in rows if r["method"] == method and r["impl"] == impl]
            if not runs:
                continue
            per_class = [statistics.mean(c) for c in zip(*(r["per_class"] for r in runs))]
            lines.append(f"| {method} | {'reference' if impl == 'ref' else 'this project'} | "
                         f"{','.join(str(r['seed']) for r in runs)} | {_mean_std([r['top1'] for r in runs])} | "
                         f"{' '.join(f'{a:.3f}'.lstrip('0') for a in per_class)} | "
                         f"{statistics.mean(r['seconds'] for r in runs) / 60:.0f} | "
                         f"{welch(top1['ref'], top1['ours']) if impl == 'ours' else ''} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--reference", default=str(ROOT.parent / "shared/reference/imbalanced-semi-self"))
    ap.add_argument("--work", default="runs/equal-budget")
    ap.add_argument("--methods", default="ce,ldam_drw")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--impl", default="ref,ours", help="which code to run: ref, ours or both")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    splits = ensure_splits(args.archive, Path("runs/bench")) if "ours" in args.impl else None
    for method in args.methods.split(","):
        for seed in map(int, args.seeds.split(",")):
            for impl in args.impl.split(","):
                key = {"impl": impl, "method": method, "epochs": args.epochs, "seed": seed}
                if any(all(r[k] == v for k, v in key.items()) for r in done):
                    continue
                started = time.time()
                run = (reference_run(Path(args.reference), work, args.archive, method, args.epochs, seed)
                       if impl == "ref" else our_run(splits, work, method, args.epochs, seed))
                row = {**key, **run, "seconds": time.time() - started}
                print(json.dumps(row), flush=True)
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                done.append(row)
    print(table([r for r in done if r["epochs"] == args.epochs and r["method"] in args.methods.split(",")],
                args.epochs))


if __name__ == "__main__":
    main()
