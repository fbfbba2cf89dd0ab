"""Benchmark: streaming pseudo-label throughput (images/s) and micro-batch latency of
jobs/pseudolabel.py's query: read Parquet, decode, score with ResNet-32, write labels and balance.

    .venv/bin/python bench/stream.py --archive ../shared/data/cifar10-jpeg.tar.gz [--images 20000] [--precision bf16]

The pool is CIFAR-10-LT's unlabeled split (JPEG, 32x32), replayed into --files files and read
--files-per-trigger at a time. The scoring model is an untrained ResNet-32 logged to MLflow like a
trained one: throughput does not depend on the weights. The first micro-batch (Python workers start,
the model loads) is reported apart from the steady state."""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from replay import drip  # noqa: E402  (bench/replay.py)
from train import ensure_splits  # noqa: E402  (bench/train.py: make the splits once)

from models import create_model  # noqa: E402
from pipeline import model_io  # noqa: E402
from pipeline.accel import inference_batch  # noqa: E402
from pipeline.distributed import wants_gpu  # noqa: E402
from pipeline.config import resolve  # noqa: E402
from pipeline.schema import TRUTH  # noqa: E402
from pipeline.spark import session  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402
from streaming.pseudolabel import run_pseudolabel  # noqa: E402
from pipeline.pseudolabel.store import read_balance  # noqa: E402
from pipeline.records import Manifest  # noqa: E402


def log_model(splits: Path, name: str) -> str:
    manifest = Manifest.read(str(splits)).to_dict()
    tracker = Tracker("bench-stream", f"{name}-untrained", {"stage": "base", "model": name, "dataset": "cifar10"})
    tracker.log_dict(manifest, "manifest.json")
    spec = model_io.spec_of(name, num_classes=10, in_channels=3, image_size=32, head="linear", head_scale=30.0,
                            classifier_only=False, mean=[0.5] * 3, std=[0.25] * 3)
    tracker.log_model(spec, model_io.build(spec).eval(), np.random.rand(2, 3, 32, 32).astype(np.float32))
    tracker.end()
    return tracker.run_id


def forward_ceiling(name: str, threads: int, images: int = 2048, precision: str = "fp32", batch: int = 512) -> float:
    """Images/s of the model's forward pass alone (random input, batches of ``batch``, channels-last, in
    ``precision``), with ``threads`` torch threads: the bound the stream cannot beat on this device."""
    import contextlib

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(threads)
    model = create_model(name, num_classes=10, in_channels=3, image_size=32).eval().to(device)
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.inference_mode(), bf16:
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.time()
        for _ in range(images // batch):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return images // batch * batch / (time.time() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--work", default="runs/bench")
    ap.add_argument("--images", type=int, default=20000, help="images of the pool to stream")
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--files-per-trigger", type=int, default=2)
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per Spark task")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the scoring forward pass")
    ap.add_argument("--batch-size", type=int, default=None, help="images per forward pass (pseudolabel.batch_size)")
    args = ap.parse_args()
    work = Path(args.work)
    splits = ensure_splits(args.archive, work)
    inbox, out = work / "stream-inbox", work / "stream-out"
    for path in (inbox, out):
        shutil.rmtree(path, ignore_errors=True)
    drip(str(splits / "unlabeled"), inbox, args.files, limit=args.images)
    run_id = log_model(splits, args.model)
    cfg = resolve([], [("spark.master", args.master), ("pseudolabel.model", run_id),
                       ("pseudolabel.input", str(inbox)), ("pseudolabel.out", str(out)),
                       ("pseudolabel.truth", str(splits / TRUTH)),
                       ("pseudolabel.max_files_per_trigger", str(args.files_per_trigger)),
                       ("pseudolabel.threads_per_task", str(args.threads)),
                       ("pseudolabel.precision", args.precision)]
                  + ([("pseudolabel.batch_size", str(args.batch_size))] if args.batch_size else []))
    spark = session(cfg.spark)
    started = time.time()
    run_pseudolabel(spark, cfg)
    wall = time.time() - started
    cores = spark.sparkContext.defaultParallelism
    spark.stop()

    batches = read_balance(str(out)).to_pandas().drop_duplicates("batch_id")
    first, steady = batches.iloc[0], batches.iloc[1:]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {cores} Spark task slots"
    batch = inference_batch(cfg.pseudolabel.batch_size, "cuda" if wants_gpu(cfg.pseudolabel.device) else "cpu")
    print(f"device: {device}; model {args.model}; {int(batches.batch_rows.sum())} images in {len(batches)} "
          f"micro-batches of {args.files_per_trigger} files; {args.threads} torch thread(s) per task; "
          f"scoring in {args.precision}, {batch} images per forward pass")
    print(f"{'':<42}{'images/s':>10}{'latency s':>11}")
    print(f"{'first micro-batch (workers start, model loads)':<42}{first.rows_per_s:>10.0f}{first.latency_s:>11.2f}")
    if len(steady):
        rate = steady.batch_rows.sum() / steady.latency_s.sum()
        print(f"{'steady state (later micro-batches)':<42}{rate:>10.0f}{steady.latency_s.median():>11.2f}"
              f"  (median; p90 {steady.latency_s.quantile(0.9):.2f})")
    print(f"{'whole query, wall clock':<42}{batches.batch_rows.sum() / wall:>10.0f}")
    alone = forward_ceiling(args.model, args.threads, precision=args.precision, batch=batch)
    print(f"{f'forward pass alone, {args.threads} thread(s)':<42}{alone:>10.0f}"
          f"  (x {cores} task slots = {alone * cores:.0f}: the bound for this device)")


if __name__ == "__main__":
    main()
