"""Benchmark: how each stage's cost grows with the pool, up to a web-scale pseudo-label stream.

    .venv/bin/python bench/scale.py [--images 1020000] [--classes 1000] [--files 100] [--work DIR]

1. Draws a pool procedurally (``draw``): ``--images`` grey 8 x 8 PNGs in ``--classes`` classes
   (a fixed random pattern per class plus noise, as many images per class), as an image-folder tar
   ``train/<class>/<n>.png`` with a small ``test`` split beside it.
2. Ingests the first 1%, 10% and all of it with the real ``jobs/ingest.py``, and makes long-tailed
   splits of each with ``jobs/longtail.py`` (labeled: rho 10 from 20 images a class, fewer where a
   class has under 40; the pool: every image left over, in ``--files`` files): seconds per 100,000 images and the peak memory of the
   job's processes (driver JVM and Python, executors in local mode), per size.
3. Streams the largest pool with the real ``jobs/pseudolabel.py`` (one file a micro-batch; the EM
   prior estimate runs on every micro-batch) and a small model (ResNet-20, untrained, logged to
   MLflow with the splits' manifest like a trained one: the cost does not depend on the weights),
   while the dashboard's loader polls the output every 2 seconds as a browser would.

It prints each micro-batch's wall time, bookkeeping included (the job's own "batch N: ... in W s"
lines), and checks the two targets: the median of the last tenth of the micro-batches within 1.25x
of the first tenth's (batch 0, which starts the Python workers and loads the model, left out), and
the dashboard's refresh under 1 s at the end. A ``--images 100000`` run takes a few minutes."""
from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline import model_io  # noqa: E402
from pipeline.records import Manifest  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402
from streaming import dashboard  # noqa: E402
from sittings import SUBMIT  # noqa: E402  (bench/sittings.py: spark-submit local[2], the driver's 4 GB)
SIZE = 8  # pixels a side
_BATCH_LINE = re.compile(r"^batch (\d+): (\d+) images in ([\d.]+) s .*scoring ([\d.]+) s, state and balance ([\d.]+) s")


def draw(path: Path, images: int, classes: int, test_per_class: int = 2, seed: int = 0) -> None:
    """The pool as an image-folder tar: image n of the train split is class n % classes, drawn as the
    class's fixed pattern plus uniform noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, size=(classes, SIZE, SIZE))
    with tarfile.open(path, "w") as tar:
        def add(name: str, klass: int) -> None:
            pixels = np.clip(patterns[klass] + rng.integers(-40, 41, size=(SIZE, SIZE)), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
            info = tarfile.TarInfo(name)
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
        for n in range(images):
            add(f"train/c{n % classes:04d}/{n:08d}.png", n % classes)
        for n in range(classes * test_per_class):
            add(f"test/c{n % classes:04d}/{n:08d}.png", n % classes)


def run(args: list[str], log: Path) -> tuple[float, float]:
    """(seconds, peak GiB of the job's process tree) of one spark-submit job; fails with its log."""
    started = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(SUBMIT + [str(a) for a in args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.5)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args[:2]))} failed ({log}):\n{log.read_text()[-3000:]}")
    return time.time() - started, peak / 2 ** 30


def log_model(splits: Path, classes: int) -> str:
    manifest = Manifest.read(str(splits))
    tracker = Tracker("bench-scale", "resnet20-8px-untrained", {"stage": "base", "model": "resnet20",
                                                               "dataset": "scale"})
    tracker.log_dict(manifest.to_dict(), Manifest.FILE)
    spec = model_io.spec_of("resnet20", num_classes=classes, in_channels=1, image_size=SIZE, head="linear",
                            head_scale=30.0, classifier_only=False, mean=[0.5], std=[0.25])
    tracker.log_model(spec, model_io.build(spec).eval(), np.random.rand(2, 1, SIZE, SIZE).astype(np.float32))
    tracker.end()
    return tracker.run_id


class Poller(threading.Thread):
    """The dashboard's loader, every ``interval`` seconds with its own cache, as a browser page would."""

    def __init__(self, out: Path, interval: float = 2.0):
        super().__init__(daemon=True)
        self.out, self.interval, self.times, self.stop = str(out / "balance"), interval, [], threading.Event()

    def refresh(self, cache: dict) -> float:
        started = time.time()
        data = dashboard.load(self.out, cache)
        if data["state"] == "ok":
            dashboard.figures(data)
        elif data["state"] == "error":
            raise SystemExit(f"the dashboard could not read the stream: {data['error']}")
        return time.time() - started

    def run(self) -> None:
        cache: dict = {}
        while not self.stop.wait(self.interval):
            self.times.append(self.refresh(cache))


def stream(splits: Path, classes: int, work: Path) -> dict:
    run_id = log_model(splits, classes)
    out = work / "pseudo-labels"
    poller = Poller(out)
    poller.start()
    log = work / "pseudolabel.log"
    seconds, peak = run(["jobs/pseudolabel.py", "--model", run_id, "--input", splits / "unlabeled", "--out", out,
                         "--max-files-per-trigger", "1"], log)
    poller.stop.set()
    poller.join()
    batches = [(int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5)))
               for line in log.read_text().splitlines() if (m := _BATCH_LINE.match(line))]
    end = poller.refresh({})  # a page opened at the end reads everything once
    warm = dashboard.load(str(out / "balance"), cache := {})
    again = poller.refresh(cache)  # and refreshes from there
    del warm
    return {"seconds": seconds, "peak_gib": peak, "batches": batches, "refresh_end_s": again,
            "refresh_cold_s": end, "refreshes": poller.times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1_020_000, help="train images drawn (the pool is what the "
                                                                  "labeled split leaves)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--files", type=int, default=100, help="files of the pool: one micro-batch each")
    ap.add_argument("--work", default=None, help="default: a temporary folder")
    ap.add_argument("--sizes", default="0.01,0.1,1", help="shares of --images ingested and split for the growth table")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                      PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                      MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")  # the jobs' store and the model's
    growth = []
    for share in map(float, args.sizes.split(",")):
        n = int(round(args.images * share))
        tar = work / f"pool-{n}.tar"
        if not tar.exists():
            t = time.time()
            draw(tar, n, args.classes)
            print(f"drew {n} images in {time.time() - t:.0f} s: {tar}", flush=True)
        data, splits = work / f"ingest-{n}", work / f"splits-{n}"
        t_ingest, m_ingest = run(["jobs/ingest.py", "--dataset", "imagefolder", "--source", tar, "--out", data,
                                  "--overwrite"], work / f"ingest-{n}.log")
        head = min(20, n // args.classes // 2)  # the labeled head class: at most half of a class's images
        t_split, m_split = run(["jobs/longtail.py", "--data", data, "--out", splits, "--imbalance-ratio",
                                min(10, head), "--labeled-max", head, "--set",
                                f"longtail.files_per_split={args.files}", "--overwrite"], work / f"longtail-{n}.log")
        pool = Manifest.read(str(splits)).to_dict()["totals"].get("unlabeled", 0)
        growth.append((n, pool, t_ingest, m_ingest, t_split, m_split))
        print(f"{n} images: ingest {t_ingest:.0f} s ({t_ingest / n * 1e5:.1f} s per 100k, peak {m_ingest:.1f} GiB), "
              f"longtail {t_split:.0f} s ({t_split / n * 1e5:.1f} s per 100k, peak {m_split:.1f} GiB), "
              f"pool {pool}", flush=True)
    result = stream(splits, args.classes, work)
    steady = [row for row in result["batches"] if row[0] > 0]
    walls, books = [row[2] for row in steady], [row[4] for row in steady]
    tenth = max(1, len(walls) // 10)
    first, last = statistics.median(walls[:tenth]), statistics.median(walls[-tenth:])
    scored = sum(row[1] for row in result["batches"])
    print(f"\n{'images':>10} {'ingest s/100k':>14} {'peak GiB':>9} {'longtail s/100k':>16} {'peak GiB':>9}")
    for n, _, ti, mi, ts, ms in growth:
        print(f"{n:>10} {ti / n * 1e5:>14.1f} {mi:>9.1f} {ts / n * 1e5:>16.1f} {ms:>9.1f}")
    print(f"\nstream: {scored} images, {args.classes} classes, {len(result['batches'])} micro-batches in "
          f"{result['seconds']:.0f} s (peak {result['peak_gib']:.1f} GiB)")
    print("micro-batch wall s, every tenth: " + " ".join(f"{w:.2f}" for w in walls[::tenth]))
    print(f"median wall, first tenth (batches 1-{tenth}): {first:.2f} s; last tenth: {last:.2f} s; "
          f"ratio {last / first:.2f} (target <= 1.25): {'met' if last <= 1.25 * first else 'NOT met'}")
    print(f"of which state and balance: {statistics.median(books[:tenth]):.2f} s first tenth, "
          f"{statistics.median(books[-tenth:]):.2f} s last tenth (slowest {max(books):.2f} s)")
    print(f"dashboard refresh at the end: {result['refresh_end_s']:.2f} s (a cold page: {result['refresh_cold_s']:.2f} s; "
          f"slowest while streaming: {max(result['refreshes'], default=0):.2f} s) (target < 1 s): "
          f"{'met' if result['refresh_end_s'] < 1 else 'NOT met'}")


if __name__ == "__main__":
    main()
