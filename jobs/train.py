"""spark-submit jobs/train.py --splits SPLITS --method NAME [--epochs N] [--num-processes K] [--seed S]

Train a classifier on the long-tailed labeled split with a named recipe (conf/methods/NAME.yaml),
launched through TorchDistributor and tracked in MLflow."""
from pathlib import Path

from pipeline.cli import JobParser, run_spark_job
from pipeline.launch import launch_fit, result_summary

METHODS = Path(__file__).resolve().parent.parent / "conf" / "methods"


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    methods = sorted(p.stem for p in METHODS.glob("*.yaml"))
    parser.flag("--method", key="train.method", help=f"a recipe: {', '.join(methods)}")
    parser.training_flags()
    parser.flag("--pretrained", key="train.pretrained", metavar="RUN_ID|PATH",
                help="initialise the backbone from a run's checkpoint (the head is dropped)")
    args, cfg = parser.resolve(argv, required={"train.splits": "--splits SPLITS"},
                            layers=lambda c: [str(METHODS / f"{c.train.method}.yaml")] if c.train.method else [])
    return run_spark_job(cfg, launch_fit, result_summary, args.result)


if __name__ == "__main__":
    main()
