"""python jobs/compare.py --experiment NAME [--csv FILE]

The results table of an MLflow experiment: mean ± std over seeds of the final-epoch test metrics
(%, ECE in [0, 1]) per dataset, imbalance ratio and method; the best epoch on the test split in its
own column, for comparison with papers only."""
import argparse

from pipeline.report import CLASSIFIER_STAGES, compare, finished_runs, markdown


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--stage", action="append", choices=CLASSIFIER_STAGES,
                    help="only runs of this stage (repeatable); default: all of them")
    ap.add_argument("--csv", help="also write the table as CSV")
    args = ap.parse_args(argv)
    stages = tuple(args.stage or CLASSIFIER_STAGES)
    runs = finished_runs(args.experiment, stages)
    if runs.empty:
        raise SystemExit(f"error: no finished {'/'.join(stages)} runs in experiment {args.experiment!r}")
    table = compare(runs)
    if args.csv:
        table.to_csv(args.csv, index=False)
    text = markdown(table)
    print(text)
    return text


if __name__ == "__main__":
    main()
