"""Benchmark: ingest the full CIFAR-10 JPEG archive (60,000 images) and make the CIFAR-10-LT
(rho = 100, exp) splits on local Spark, printing images/s for each stage.

    .venv/bin/python bench/ingest.py --archive ../shared/data/cifar10-jpeg.tar.gz [--master local[2]]

Target on the 2-core development machine: ingest + split in under 2 minutes."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import resolve  # noqa: E402
from pipeline.ingest import run_ingest  # noqa: E402
from pipeline.spark import session  # noqa: E402
from pipeline.longtail.splits import run_longtail, summary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", required=True, help="cifar10-jpeg.tar.gz (or its extracted folder)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--work", default=None, help="output folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-ingest-"))
    cfg = resolve(["conf/experiments/cifar10_lt100.yaml"], [
        ("spark.master", args.master), ("ingest.source", json.dumps([os.path.abspath(args.archive)])),
        ("ingest.out", str(work / "cifar10")), ("ingest.overwrite", "true"),
        ("longtail.data", str(work / "cifar10")), ("longtail.out", str(work / "cifar10-lt100")),
        ("longtail.overwrite", "true")])
    started = time.time()
    spark = session(cfg.spark)
    t_spark = time.time() - started

    t0 = time.time()
    report = run_ingest(spark, cfg)
    t_ingest = time.time() - t0
    t0 = time.time()
    manifest = run_longtail(spark, cfg)
    t_split = time.time() - t0
    total = time.time() - started

    n_in, n_split = report["input_records"], report["splits"]["train"]["total"]
    print(summary(manifest))
    print(f"\nmachine: {os.cpu_count()} cores, master {args.master}")
    print(f"{'stage':<28}{'images':>9}{'seconds':>10}{'images/s':>11}")
    print(f"{'spark start':<28}{'':>9}{t_spark:>10.1f}{'':>11}")
    print(f"{'ingest (decode + validate)':<28}{n_in:>9}{t_ingest:>10.1f}{n_in / t_ingest:>11.0f}")
    print(f"{'long-tail splits (rho=100)':<28}{n_split:>9}{t_split:>10.1f}{n_split / t_split:>11.0f}")
    print(f"{'total':<28}{n_in:>9}{total:>10.1f}{n_in / total:>11.0f}")
    assert report["written"] == 60000 and report["rejected"]["total"] == 0, report["rejected"]
    assert manifest["class_counts"]["labeled"] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    spark.stop()


if __name__ == "__main__":
    main()
