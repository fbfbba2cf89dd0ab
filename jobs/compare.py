"""python jobs/compare.py --experiment NAME [--csv FILE]

The results table of an MLflow experiment: mean ± std over seeds of the final-epoch test metrics
(%, ECE in [0, 1]) per dataset, imbalance ratio and method; the best epoch on the test split in its
own column, for comparison with papers only."""
import argparse

from pipeline.report import compare, finished_runs, markdown


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--stage", default="base")
    ap.add_argument("--csv", help="also write the table as CSV")
    args = ap.parse_args(argv)
    runs = finished_runs(args.experiment, args.stage)
    if runs.empty:
        raise SystemExit(f"error: no finished {args.stage} runs in experiment {args.experiment!r}")
    table = compare(runs)
    if args.csv:
        table.to_csv(args.csv, index=False)
    text = markdown(table)
    print(text)
    return text


if __name__ == "__main__":
    main()
