"""Benchmark: this project against the paper's public code at the same epoch budget, on the same
machine, over several seeds: CIFAR-10-LT rho = 100 from the JPEG copy in ../shared/data, ResNet-32,
batch 128, the reference schedule scaled to ``--epochs``.

    .venv/bin/python bench/equal_budget.py --archive ../shared/data/cifar10-jpeg.tar.gz \\
        --reference ../shared/reference/imbalanced-semi-self --methods ce,ldam_drw --epochs 15 --seeds 0,1,2

``ref`` runs the reference ``train.py`` unmodified, through the reference folder's own CPU runner
(``run_ref.py``: its schedule scaled exactly as this project scales it), on the CIFAR batches its
``convert.py`` makes from the same archive; the folder is copied under ``--work`` because the runner
writes beside itself. ``ours`` runs ``pipeline.train.fit`` with the recipe of the same name, on this
project's own draw of the 12,406 labeled images (``--subset ours``, ``--split-seed`` its longtail
seed) or on the very images the reference code trains on (``--subset reference``: its per-class
draw, given to jobs/longtail.py as a split list). Each finished run is appended to
``WORK/results.jsonl``, so an interrupted study resumes where it stopped; the table (mean +- std of
the final-epoch top-1 and per-class accuracy) is printed at the end.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train import ensure_splits  # noqa: E402  (bench/train.py: make the splits once)
from pipeline.longtail.profiles import class_counts, subsample  # noqa: E402
from pipeline.longtail.splits import DRAWS  # noqa: E402
from pipeline.safe_pickle import loads  # noqa: E402

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


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def convert_order(archive: str) -> list[str]:
    """The training images of the archive in the order the reference folder's convert.py writes them
    into the CIFAR batches: sorted by (file name, class), then permuted by numpy's default_rng(0)."""
    import tarfile

    with tarfile.open(archive) as tar:
        names = [n for n in tar.getnames() if n.endswith(".jpg") and n.split("/")[-3] == "train"]
    rows = sorted(names, key=lambda n: (n.split("/")[-1], CLASSES.index(n.split("/")[-2])))
    return [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]


def reference_draw(order: list[str], targets: list[int], counts: list[int], seed: int = 0) -> list[str]:
    """The reference's IMBALANCECIFAR10(rand_number=seed) selection over images in batch order: this
    project's ``longtail.draw=imbalance_cifar`` (pinned to the reference's rule in the tests) over
    zero-padded batch positions, whose sorted order is the batch order."""
    positions = [[f"{i:06d}" for i, t in enumerate(targets) if t == c] for c in range(len(counts))]
    chosen = subsample(positions, counts, rng=DRAWS["imbalance_cifar"](seed))["labeled"]
    return [order[int(i)] for per_class in chosen for i in per_class]


def reference_subset(archive: str, work: Path, ref: Path, splits_root: Path = Path("runs/bench")) -> Path:
    """Splits whose labeled set is the reference's draw (checked against the labels of the batches
    convert.py wrote, so a change of convert.py's order cannot go unnoticed)."""
    order = convert_order(archive)
    targets = [CLASSES.index(n.split("/")[-2]) for n in order]
    batches = ref / "refdata" / "cifar-10-batches-py"
    written = [label for b in range(1, 6)
               for label in loads((batches / f"data_batch_{b}").read_bytes(), f"data_batch_{b}")["labels"]]
    if written != targets:
        raise RuntimeError(f"{batches}: the batches are not in the order convert_order assumes")
    ids = work / "reference-labeled-ids.txt"
    chosen = reference_draw(order, targets, class_counts("exp", 5000, 10, 100))
    ids.write_text("".join(f"{n} {n.split('/')[-2]}\n" for n in chosen))
    return ensure_splits(archive, splits_root, "cifar10-lt100-reference-subset",
                         (("longtail.labeled_ids", str(ids)),))


def prepare_reference(reference: Path, work: Path, archive: str) -> Path:
    """A copy of the reference folder under WORK (its runner writes beside itself) with its CIFAR batches."""
    ref = work / "reference"
    if not (ref / "run_ref.py").exists():
        shutil.copytree(reference, ref, ignore=shutil.ignore_patterns("refdata", "log", "checkpoint"))
    if not (ref / "refdata" / "cifar-10-batches-py" / "test_batch").exists():
        subprocess.run([sys.executable, "convert.py", os.path.abspath(archive), "refdata"], cwd=ref, check=True)
    return ref


def reference_run(reference: Path, work: Path, archive: str, method: str, epochs: int, seed: int) -> dict:
    ref = prepare_reference(reference, work, archive)
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


def code(row: dict) -> str:
    """Which code and which labeled images a result row is of (rows from before --subset: our draw 0)."""
    if row["impl"] == "ref":
        return "ref"
    if row.get("subset", "ours") == "reference":
        return "ours-refsubset"
    return "ours" if not row.get("split_seed") else f"ours-split{row['split_seed']}"


def label(code_: str) -> str:
    return {"ref": "reference", "ours": "this project", "ours-refsubset": "this project, the reference's images"}.get(
        code_, f"this project, draw {code_.removeprefix('ours-split')}")


def table(rows: list[dict], epochs: int) -> str:
    lines = [f"CIFAR-10-LT rho=100, ResNet-32, {epochs} epochs (final epoch; mean ± std over seeds)",
             "| method | code | seeds | top-1 | per class (airplane .. truck) | minutes per run | "
             "this project - reference (Welch) |", "|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        codes = sorted({code(r) for r in rows if r["method"] == method}, key=lambda c: (c != "ref", c))
        top1 = {c: [r["top1"] for r in rows if r["method"] == method and code(r) == c] for c in codes}
        for c in codes:
            runs = [r for r in rows if r["method"] == method and code(r) == c]
            per_class = [statistics.mean(v) for v in zip(*(r["per_class"] for r in runs))]
            lines.append(f"| {method} | {label(c)} | "
                         f"{','.join(str(r['seed']) for r in runs)} | {_mean_std([r['top1'] for r in runs])} | "
                         f"{' '.join(f'{a:.3f}'.lstrip('0') for a in per_class)} | "
                         f"{statistics.mean(r['seconds'] for r in runs) / 60:.0f} | "
                         f"{welch(top1.get('ref', []), top1[c]) if c != 'ref' else ''} |")
    return "\n".join(lines)


def our_splits(args, work: Path) -> Path:
    """The splits `ours` trains on: the reference's images, or this project's draw with --split-seed."""
    if args.subset == "reference":
        return reference_subset(args.archive, work, prepare_reference(Path(args.reference), work, args.archive))
    if args.split_seed == 0:
        return ensure_splits(args.archive, Path("runs/bench"))
    return ensure_splits(args.archive, Path("runs/bench"), f"cifar10-lt100-draw{args.split_seed}",
                         (("longtail.seed", str(args.split_seed)),))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--reference", default=str(ROOT.parent / "shared/reference/imbalanced-semi-self"))
    ap.add_argument("--work", default="runs/equal-budget")
    ap.add_argument("--methods", default="ce,ldam_drw")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--impl", default="ref,ours", help="which code to run: ref, ours or both")
    ap.add_argument("--subset", default="ours", choices=["ours", "reference"],
                    help="the labeled images `ours` trains on: this project's draw or the reference's")
    ap.add_argument("--split-seed", type=int, default=0, help="longtail.seed of this project's draw (--subset ours)")
    args = ap.parse_args()
    if args.subset == "reference" and args.split_seed:
        ap.error("--split-seed draws this project's images: it does not go with --subset reference")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    splits, subset = None, {"subset": args.subset, **({"split_seed": args.split_seed} if args.subset == "ours" else {})}
    if "ours" in args.impl:
        splits = our_splits(args, work)
    for method in args.methods.split(","):
        for seed in map(int, args.seeds.split(",")):
            for impl in args.impl.split(","):
                key = {"impl": impl, "method": method, "epochs": args.epochs, "seed": seed,
                       **(subset if impl == "ours" else {})}
                if any(code(r) == code(key) and all(r[k] == key[k] for k in ("method", "epochs", "seed"))
                       for r in done):
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
