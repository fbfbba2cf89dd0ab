"""python jobs/report.py --run RUN_ID [--out FILE]

(Re)build report.html of an earlier classifier run (jobs/train.py, train_semi.py, SSP fine-tuning)
from what it logged to MLflow, log it to the run again and, with --out, write it to FILE."""
import argparse
from pathlib import Path

from pipeline.report import rebuild


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, metavar="RUN_ID")
    ap.add_argument("--out", help="also write the page here")
    args = ap.parse_args(argv)
    try:
        page = rebuild(args.run)
    except Exception as e:  # an unknown run, a pre-training run, missing artifacts: one line says which
        raise SystemExit(f"error: cannot rebuild the report of run {args.run}: {type(e).__name__}: {e}") from None
    if args.out:
        Path(args.out).write_text(page)
    print(f"report.html of run {args.run} logged" + (f" and written to {args.out}" if args.out else ""))
    return page


if __name__ == "__main__":
    main()
