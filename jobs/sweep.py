"""spark-submit jobs/sweep.py --grid conf/sweeps/NAME.yaml [--config FILE] [--set key=value ...]

A study over methods x imbalance ratios x seeds: one long-tailed split per ratio, one training per
(method, ratio, seed). Small trainings run side by side as Spark tasks, large ones one after another
through TorchDistributor; a parent MLflow run groups them and receives the comparison table and
plots. A failed child is recorded as FAILED and the others go on; rerunning skips the finished ones.
--config and --set apply to every child (above the grid's own settings)."""
import sys

from pipeline.cli import JobParser, fail, overrides_of, run_spark_job
from pipeline.config import ConfigError
from pipeline.records import SweepResult
from pipeline.sweep import load_grid, run_sweep, summary


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    parser.add_argument("--grid", required=True, metavar="FILE", help="a sweep grid (conf/sweeps/*.yaml)")
    args, cfg = parser.resolve(argv)
    try:
        grid = load_grid(args.grid)
    except ConfigError as e:
        fail(f"config error: {e}", code=2)
    result = run_spark_job(cfg, lambda spark, _: run_sweep(spark, grid, args.config, overrides_of(args)),
                           summary, args.result, SweepResult)
    if result["failed"]:
        print(f"{len(result['failed'])} of {result['children']} children failed; run the same command again "
              f"to retry them (finished children are skipped)", file=sys.stderr)
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
