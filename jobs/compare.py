"""python jobs/compare.py --experiment NAME [--sweep NAME] [--stage STAGE ...] [--out DIR] [--csv FILE] [--no-log]

The results table of an MLflow experiment: mean ± std over seeds of the final-epoch test metrics
(%, ECE in [0, 1]) per dataset, imbalance ratio, method and setting; the best epoch on the test split
in its own column, for comparison with papers only. Also the comparison plots (accuracy vs imbalance
ratio per method, per-class accuracy against the class counts, confusion matrices side by side),
written to --out as compare.md, compare.csv and PNGs, and logged to a "compare" run of the experiment."""
import argparse

from pipeline import fs
from pipeline.compare import CLASSIFIER_STAGES, finished_runs, publish
from pipeline.provenance import PROJECT_ROOT
from pipeline.tracking import Tracker


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--sweep", default="", help="only the children of this sweep (jobs/sweep.py)")
    ap.add_argument("--stage", action="append", choices=CLASSIFIER_STAGES,
                    help="only runs of this stage (repeatable); default: all of them")
    ap.add_argument("--out", help="folder for the table and plots (default runs/compare/EXPERIMENT)")
    ap.add_argument("--csv", help="also write the table as CSV here")
    ap.add_argument("--no-log", action="store_true", help="do not log the comparison to MLflow")
    args = ap.parse_args(argv)
    stages = tuple(args.stage or CLASSIFIER_STAGES)
    runs = finished_runs(args.experiment, stages, sweep=args.sweep)
    if runs.empty:
        raise SystemExit(f"error: no finished {'/'.join(stages)} runs in experiment {args.experiment!r}"
                         + (f" from sweep {args.sweep!r}" if args.sweep else ""))
    out = args.out or str(PROJECT_ROOT / "runs" / "compare" / args.experiment)
    tracker = None
    if not args.no_log:

        tracker = Tracker(args.experiment, "compare" + (f"-{args.sweep}" if args.sweep else ""),
                          {"stage": "compare", **({"sweep": args.sweep} if args.sweep else {})})
        tracker.log_params({"compare": {"stages": list(stages), "sweep": args.sweep, "runs": len(runs)}})
    files = publish(runs, out, tracker)
    if tracker:
        tracker.end()
    if args.csv:
        fs.write_text(args.csv, fs.read_text(files["csv"]))
    text = fs.read_text(files["markdown"]).rstrip("\n")
    print(text)
    print(f"\ntable and plots in {out}" + (f"; logged to MLflow run {tracker.run_id}" if tracker else ""))
    return text


if __name__ == "__main__":
    main()
