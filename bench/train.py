"""Benchmark: training throughput of the two data paths (memory, petastorm) and of the ways the step
can run (pipeline.accel: fp32, channels-last, bf16 autocast, torch.compile) on CIFAR-10-LT (rho = 100,
12,406 labeled images, ResNet-32, batch 128), one process on this machine's device.

    .venv/bin/python bench/train.py --archive ../shared/data/cifar10-jpeg.tar.gz [--epochs 1] \
        [--steps fp32,channels_last,bf16,compile] [--loaders memory,petastorm] [--eval-batches 0,512]

Makes the splits once under runs/bench/ (reused afterwards), then times: decoding the labeled
split into memory, training epochs (forward, backward, SGD step, on-device augmentation) per data
path (fp32) and per step variant (memory loader), evaluation of the 10,000 test images per
variant, and what one 200-epoch run (train + evaluation every epoch) would take at those rates.
A compiled step's first epoch includes the compilation."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from models import create_model  # noqa: E402
from pipeline.config import resolve  # noqa: E402
from pipeline.data import Augment, MemoryLoader, channel_stats, load_split  # noqa: E402
from pipeline.accel import Accel, inference_batch  # noqa: E402
from pipeline.distributed import pick_device  # noqa: E402
from pipeline.losses import create_loss  # noqa: E402
from pipeline.petastorm_loader import PetastormLoader  # noqa: E402
from pipeline.objectives import Classify  # noqa: E402
from pipeline.train import predict, train_one_epoch  # noqa: E402
from pipeline.records import Manifest  # noqa: E402

STEPS = {"fp32": Accel(), "channels_last": Accel(channels_last=True), "bf16": Accel(precision="bf16"),
         "bf16_channels_last": Accel(precision="bf16", channels_last=True), "compile": Accel(compile=True)}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ensure_splits(archive: str, work: Path, name: str = "cifar10-lt100",
                  overrides: tuple[tuple[str, str], ...] = ()) -> Path:
    """Ingest the archive into WORK/cifar10 (once) and carve WORK/NAME with ``overrides`` of longtail.*."""
    splits = work / name
    if (splits / "manifest.json").exists():
        return splits
    from pipeline.ingest import run_ingest
    from pipeline.spark import session
    from pipeline.longtail.splits import run_longtail
    from pipeline.records import Ingest

    cfg = resolve(["conf/experiments/cifar10_lt100.yaml"], [
        ("ingest.source", json.dumps([os.path.abspath(archive)])), ("ingest.out", str(work / "cifar10")),
        ("ingest.overwrite", "true"), ("longtail.data", str(work / "cifar10")), ("longtail.out", str(splits)),
        ("longtail.overwrite", "true"), *overrides])
    spark = session(cfg.spark)
    done = work / "cifar10"
    if not (done / Ingest.FILE).exists() or Ingest.read(str(done)).config["source"] != cfg.ingest.source:
        run_ingest(spark, cfg)
    run_longtail(spark, cfg)
    spark.stop()
    return splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--work", default="runs/bench")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--loaders", default="memory,petastorm", help="data paths to time (fp32), comma-separated")
    ap.add_argument("--steps", default="fp32,channels_last", help=f"step variants to time: {', '.join(STEPS)}")
    ap.add_argument("--eval-batches", default="0", help="evaluation batch sizes to time, comma-separated (0: the "
                    "device's default, train.data.eval_batch_size)")
    args = ap.parse_args()
    splits = ensure_splits(args.archive, Path(args.work))
    cfg = resolve([], [("train.model", args.model)]).train
    device = pick_device("auto")

    t0 = time.time()
    labeled = load_split(str(splits / "labeled"))
    t_decode = time.time() - t0
    test = load_split(str(splits / "test")).to(device)
    mean, std = channel_stats(labeled.images)
    counts = Manifest.read(str(splits)).labeled_counts
    loss_fn = create_loss(counts, cfg.loss).to(device)
    augment = Augment(mean, std, "crop_flip", 4)

    def fresh(accel: Accel):
        torch.manual_seed(0)
        model = accel.model(create_model(args.model, num_classes=10, in_channels=3, image_size=32).to(device))
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)

    memory = MemoryLoader(labeled.to(device), counts, cfg, augment)
    rows = []  # (what, epoch, train images/s)
    for kind in [k for k in args.loaders.split(",") if k]:
        loader = memory if kind == "memory" else PetastormLoader(str(splits / "labeled"), counts, cfg, augment).to(device)
        model, opt = fresh(STEPS["fp32"])
        for epoch in range(args.epochs):
            sync(device)
            t0 = time.time()
            _, _, seen = train_one_epoch(model, Classify(cfg), loss_fn, opt, loader, epoch, None, device)
            sync(device)
            rows.append((f"{kind} loader, fp32", epoch, seen / (time.time() - t0)))
        if hasattr(loader, "close"):
            loader.close()
    evals = {}
    for step in [s for s in args.steps.split(",") if s]:
        accel = STEPS[step]
        model, opt = fresh(accel)
        stepper = accel.step_model(model)  # compiled lazily: the first epoch pays for it
        for epoch in range(args.epochs):
            sync(device)
            t0 = time.time()
            _, _, seen = train_one_epoch(stepper, Classify(cfg), loss_fn, opt, memory, epoch, None, device, accel=accel)
            sync(device)
            rows.append((f"memory loader, {step}", epoch, seen / (time.time() - t0)))
        for size in [int(b) for b in args.eval_batches.split(",") if b]:
            batch = inference_batch(size, device)
            sync(device)
            t0 = time.time()
            predict(model, test, augment, batch, device, accel)
            sync(device)
            evals.setdefault(step, {})[batch] = len(test) / (time.time() - t0)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; model {args.model}, batch {cfg.batch_size}, {len(labeled)} labeled images")
    print(f"{'stage':<60}{'images/s':>10}{'s/epoch':>10}")
    print(f"{'decode labeled split into memory':<60}{len(labeled) / t_decode:>10.0f}")
    for what, epoch, rate in rows:
        print(f"{f'train epoch {epoch + 1} ({what})':<60}{rate:>10.0f}{len(labeled) / rate:>10.1f}")
    for step, by_batch in evals.items():
        for batch, rate in by_batch.items():
            print(f"{f'evaluate {len(test)} test images ({step}, batch {batch})':<60}{rate:>10.0f}"
                  f"{len(test) / rate:>10.1f}")
    print("\none 200-epoch run (train + evaluation every epoch) at the last epoch's rate, the default "
          "evaluation batch:")
    default = inference_batch(cfg.data.eval_batch_size, device)
    for step, by_batch in evals.items():
        rate = by_batch.get(default, next(iter(by_batch.values())))
        train = [r for w, _, r in rows if w == f"memory loader, {step}"][-1]
        total = 200 * (len(labeled) / train + len(test) / rate)
        print(f"  {step}: {total / 60:.1f} min ({total:.0f} s)")


if __name__ == "__main__":
    main()
