"""Drip an unlabeled pool into a folder, file by file, as new data would arrive: to watch
`jobs/pseudolabel.py --trigger continuous` (and the dashboard) pick it up live.

    .venv/bin/python bench/replay.py --source SPLITS/unlabeled --inbox runs/inbox --files 20 --interval 5

Each file is written beside the inbox and renamed into it, so the stream never sees a partial file."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow.parquet as pq  # noqa: E402

from pipeline.data import read_table  # noqa: E402


def drip(source: str, inbox: Path, files: int, interval: float = 0.0, limit: int | None = None) -> list[Path]:
    """Split the pool (its first ``limit`` rows) into ``files`` Parquet files and move them into ``inbox``."""
    table = read_table(source, max_rows=limit)
    inbox.mkdir(parents=True, exist_ok=True)
    staging = inbox.parent / f".{inbox.name}-staging"
    staging.mkdir(parents=True, exist_ok=True)
    per_file = -(-table.num_rows // files)
    written = []
    for i in range(files):
        part = table.slice(i * per_file, per_file)
        if part.num_rows == 0:
            break
        name = f"part-{i:05d}.parquet"
        pq.write_table(part, staging / name)
        os.replace(staging / name, inbox / name)
        written.append(inbox / name)
        print(f"{time.strftime('%H:%M:%S')} {inbox / name}: {part.num_rows} images", flush=True)
        if interval and i < files - 1:
            time.sleep(interval)
    staging.rmdir()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="a Parquet split, e.g. SPLITS/unlabeled")
    ap.add_argument("--inbox", required=True, type=Path, help="the folder the stream reads")
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between files")
    ap.add_argument("--limit", type=int, help="only the first LIMIT images")
    args = ap.parse_args()
    drip(args.source, args.inbox, args.files, args.interval, args.limit)


if __name__ == "__main__":
    main()
