"""The reference protocol on CIFAR-10-LT (rho = 100, ResNet-32, 200 epochs) from the JPEG copy in
../shared/data, through the real job (spark-submit jobs/train.py: TorchDistributor, MLflow), one
run per method and seed, on the reference code's very images (``--subset reference``, as
bench/equal_budget.py) or this project's draw (``--subset ours``).

    .venv/bin/python bench/cifar10_lt.py --archive ../shared/data/cifar10-jpeg.tar.gz --methods ce,ldam_drw

A 200-epoch run is ~3 hours on a 2-core CPU (55 s an epoch), longer than one sitting, so the table is built across
sittings:

- the resumable state (ingest, splits, checkpoints, the MLflow store) lives in ``--state`` (default
  ``$LONGTAIL_STATE``, else ``~/.cache/longtail-lab``), outside the work tree;
- each finished run writes its record into ``--records`` at once (``<method>-s<seed>.json``: commit,
  config and manifest sha256, seed, epochs, final and per-class figures, minutes, device, step); a
  rerun skips a run whose record has the same config and data, and resumes an interrupted one from its
  last checkpoint (the same weights it would have reached without the interruption);
- ``--carry DIR`` keeps a copy of every unfinished run's checkpoint in DIR (refreshed each minute) and
  starts from it when the state is gone (a new machine): the run then continues in a new MLflow run
  (tag ``resumed_from_run_id``) with every epoch so far. Without a checkpoint, a run starts over and
  says so.

The table printed at the end holds every record in ``--records``, beside the reference code's figures
on this copy (../shared/data/README.md) and the papers'."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from equal_budget import prepare_reference, reference_subset  # noqa: E402  (the reference's images)
from sittings import (SUBMIT, RunAbout, drop_carried, pct, prepare_environment, progress,  # noqa: E402
                      read_records, run_job, same_record, state_root, sync_carry, write_record)
from train import ensure_splits  # noqa: E402  (bench/train.py: make the splits once)

from pipeline.config import config_sha256, resolve  # noqa: E402
from pipeline.recipes import recipe_layers  # noqa: E402
from pipeline.records import Manifest, TrainResult, read_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "conf/experiments/cifar10_lt100.yaml"  # CIFAR-10-LT: the reference normalisation constants
# The reference implementation (Yang & Xu 2020 / Cao et al. 2019 code) on this JPEG copy, from
# ../shared/data/README.md, and the papers' figures on the original arrays.
REFERENCE = {"ce": "64.8 final (66.1 best epoch)", "ldam_drw": "72.8 best epoch"}
PAPERS = {"ce": "70.4 (Cao et al. 2019)", "ldam_drw": "77.0 (Cao et al. 2019)",
          "cb_focal": "74.6 (Cui et al. 2019)", "balanced_softmax": "- (CIFAR-10-LT rho 100 not reported)",
          "logit_adjust": "77.7 (Menon et al. 2021, post-hoc 77.4)"}


def overrides(splits: Path, method: str, args, run_dir: Path) -> list[tuple[str, str]]:
    """The job's settings, as ``--set`` pairs: the same list resolves the config here (for its sha256)."""
    return [("train.splits", str(splits)), ("train.method", method), ("train.epochs", str(args.epochs)),
            ("train.seed", str(args.seed)), ("train.eval_every", str(args.eval_every)),
            ("train.tracking.experiment", f"cifar10-lt100-e{args.epochs}"), ("train.runtime.run_dir", str(run_dir)),
            ("train.runtime.resume", "true"), *(tuple(kv.split("=", 1)) for kv in args.set)]


def resolved(pairs: list[tuple[str, str]]):
    """The config jobs/train.py resolves from ``--config EXPERIMENT`` and these pairs (recipe below)."""
    cfg = resolve([str(ROOT / EXPERIMENT)], pairs)
    return resolve(recipe_layers(cfg) + [str(ROOT / EXPERIMENT)], pairs)


def cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def record_name(method: str, args) -> str:
    """<method>-s<seed>[-ours][-set<sha>]: runs of other images or settings never share a record."""
    import hashlib

    extra = ("" if args.subset == "reference" else f"-{args.subset}") + (
        f"-set{hashlib.sha256(' '.join(args.set).encode()).hexdigest()[:8]}" if args.set else "")
    return f"{method}-s{args.seed}{extra}"


def about(method: str, args) -> RunAbout:
    """What the record says beside the job's result (which carries the seed, epochs, config and
    manifest sha256, the commit...): the recipe, the images and what the run ran on."""
    return RunAbout(method=method, eval_every=args.eval_every, subset=args.subset,
                    dataset="cifar10-jpeg (../shared/data), rho 100, ResNet-32",
                    cpu=platform.processor() or platform.machine(), cpu_capability=cpu_capability(),
                    threads=os.cpu_count())


def table(records: list[tuple[RunAbout, TrainResult]]) -> str:
    lines = ["| method | seed | epochs | final top-1 | many | medium | few | best evaluated epoch on test (papers only) "
             "| minutes (at the median epoch's pace) | step | reference code on this copy | paper (original arrays) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a, r in sorted(records, key=lambda ar: (ar[1].epochs, ar[0].method, ar[1].seed)):
        lines.append(
            f"| {a.method} | {r.seed} | {r.epochs} | {pct(r.final_test_top1)} | {pct(r.final_test_many_accuracy)} | "
            f"{pct(r.final_test_medium_accuracy)} | {pct(r.final_test_few_accuracy)} | "
            f"{pct(r.best_on_test_epoch_top1)} (epoch {r.best_on_test_epoch}) | "
            f"{r.train_minutes:.0f} ({r.median_epoch_seconds * r.epochs / 60:.0f}) | {r.step['precision']}"
            f"{' channels-last' if r.step['channels_last'] else ''}, {r.device} {a.cpu_capability} | "
            f"{REFERENCE.get(a.method, '-') if r.epochs == 200 else '-'} | {PAPERS.get(a.method, '-')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", help="cifar10-jpeg.tar.gz (not needed with --table)")
    ap.add_argument("--methods", default="ce,ldam_drw")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=5, help="train.eval_every (the last epoch is always evaluated)")
    ap.add_argument("--subset", default="reference", choices=["reference", "ours"])
    ap.add_argument("--state", help="where the resumable state lives (default $LONGTAIL_STATE or ~/.cache/longtail-lab)")
    ap.add_argument("--records", default=None, help="default: docs/records/cifar10-lt100-e<epochs>")
    ap.add_argument("--carry", default=None, help="a folder that keeps unfinished runs' checkpoints across machines")
    ap.add_argument("--reference", default=str(ROOT.parent / "shared/reference/imbalanced-semi-self"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another setting of every run")
    ap.add_argument("--table", action="store_true", help="print the table of the records and stop")
    ap.add_argument("--progress", action="store_true",
                    help="print where each unfinished run stands (state and carry folder) and stop")
    args = ap.parse_args()
    state = state_root(args.state) / "cifar10-lt"
    records = Path(args.records or ROOT / f"docs/records/cifar10-lt100-e{args.epochs}").resolve()
    if args.table:
        return print(table(read_records(records, RunAbout)))
    run_dir = state / "runs" / f"e{args.epochs}"  # a budget's runs apart: --resume refuses a checkpoint of other settings
    carry = Path(args.carry).resolve() / f"e{args.epochs}" if args.carry else None
    if args.progress:
        return print("\n".join(progress(run_dir, carry)) or "no unfinished run")
    if not args.archive:
        ap.error("--archive is required (except with --table or --progress)")
    prepare_environment(state)
    os.chdir(ROOT)
    if args.subset == "reference":
        ref = prepare_reference(Path(args.reference), state, args.archive)
        splits = reference_subset(args.archive, state, ref, splits_root=state)
    else:
        splits = ensure_splits(args.archive, state)
    manifest = Manifest.read(str(splits)).manifest_sha256
    if carry:
        sync_carry(run_dir, carry, restore=True)
    for method in args.methods.split(","):
        pairs = overrides(splits, method, args, run_dir)
        cfg, out = resolved(pairs), records / f"{record_name(method, args)}.json"
        if same_record(out, RunAbout, config_sha256(cfg), manifest):
            print(f"--- {method} seed {args.seed}: finished ({out}), skipped", flush=True)
            continue
        if not any(run_dir.glob(f"*-{method}-s{args.seed}-*/checkpoint.pt")):
            print(f"--- {method} seed {args.seed}: no checkpoint in {run_dir}: starts at epoch 1", flush=True)
        result_file = state / "results" / f"{method}-s{args.seed}.json"
        result_file.parent.mkdir(parents=True, exist_ok=True)
        run_job([*SUBMIT, "jobs/train.py", "--config", EXPERIMENT, *(a for k, v in pairs for a in ("--set", f"{k}={v}")),
                 "--result", str(result_file)], run_dir, carry)
        result = read_result("train", str(result_file))
        write_record(out, about(method, args), result)
        print(f"--- {method} seed {args.seed}: final top-1 {100 * result.final_test_top1:.1f}, record {out}", flush=True)
        drop_carried(carry, result.checkpoint)
    print(f"\nCIFAR-10-LT rho=100, ResNet-32 ({args.subset} images), records in {records}:")
    print(table(read_records(records, RunAbout)))


if __name__ == "__main__":
    main()
