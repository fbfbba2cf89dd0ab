"""Benchmark: training throughput of the two data paths (memory, petastorm) on CIFAR-10-LT (rho = 100, 12,406 labeled
images, ResNet-32, batch 128), one process on this machine's device.

    .venv/bin/python bench/train.py --archive ../shared/data/cifar10-jpeg.tar.gz [--epochs 1]

Makes the splits once under runs/bench/ (reused afterwards), then times: decoding the labeled
split into memory, and training epochs (forward, backward, SGD step, on-device augmentation)."""
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
from pipeline.distributed import pick_device  # noqa: E402
from pipeline.losses import create_loss  # noqa: E402
from pipeline.petastorm_loader import PetastormLoader  # noqa: E402
from pipeline.objectives import Classify  # noqa: E402
from pipeline.train import train_one_epoch  # noqa: E402


def ensure_splits(archive: str, work: Path) -> Path:
    splits = work / "cifar10-lt100"
    if (splits / "manifest.json").exists():
        return splits
    from pipeline.ingest import run_ingest
    from pipeline.spark import session
    from pipeline.splits import run_longtail

    cfg = resolve(["conf/experiments/cifar10_lt100.yaml"], [
        ("ingest.source", json.dumps([os.path.abspath(archive)])), ("ingest.out", str(work / "cifar10")),
        ("ingest.overwrite", "true"), ("longtail.data", str(work / "cifar10")), ("longtail.out", str(splits)),
        ("longtail.overwrite", "true")])
    spark = session(cfg.spark)
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
    ap.add_argument("--loaders", default="memory,petastorm", help="data paths to time, comma-separated")
    args = ap.parse_args()
    splits = ensure_splits(args.archive, Path(args.work))
    cfg = resolve([], [("train.model", args.model)]).train
    device = pick_device("auto")

    t0 = time.time()
    labeled = load_split(str(splits / "labeled"))
    t_decode = time.time() - t0
    mean, std = channel_stats(labeled.images)
    counts = json.loads((splits / "manifest.json").read_text())["class_counts"]["labeled"]
    model = create_model(args.model, num_classes=10, in_channels=3, image_size=32).to(device)
    loss_fn = create_loss(counts, cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    augment = Augment(mean, std, "crop_flip", 4)
    loaders = {"memory": MemoryLoader(labeled.to(device), counts, cfg, augment),
               "petastorm": PetastormLoader(str(splits / "labeled"), counts, cfg, augment).to(device)}
    rates = []
    for kind in args.loaders.split(","):
        for epoch in range(args.epochs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
            _, _, seen = train_one_epoch(model, Classify(cfg), loss_fn, opt, loaders[kind], epoch, None, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append((kind, epoch, seen / (time.time() - t0)))
    loaders["petastorm"].close()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; model {args.model}, batch {cfg.batch_size}, {len(labeled)} labeled images")
    print(f"{'stage':<40}{'images/s':>10}")
    print(f"{'decode labeled split into memory':<40}{len(labeled) / t_decode:>10.0f}")
    for kind, epoch, rate in rates:
        print(f"{f'train epoch {epoch + 1} ({kind} loader)':<40}{rate:>10.0f}")


if __name__ == "__main__":
    main()
