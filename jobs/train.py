"""spark-submit jobs/train.py --splits SPLITS --method NAME [--epochs N] [--num-processes K] [--seed S]

Train a classifier on the long-tailed labeled split with a named recipe (conf/methods/NAME.yaml),
launched through TorchDistributor and tracked in MLflow."""
from pipeline.cli import JobParser, recipe_layers, run_spark_job
from pipeline.launch import launch_fit, result_summary
from pipeline.records import TrainResult


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    parser.method_flag()
    parser.training_flags()
    parser.flag("--pretrained", key="train.pretrained", metavar="RUN_ID|PATH",
                help="initialise the backbone from a run's checkpoint (the head is dropped)")
    args, cfg = parser.resolve(argv, required={"train.splits": "--splits SPLITS"},
                               layers=recipe_layers)
    return run_spark_job(cfg, launch_fit, result_summary, args.result, TrainResult)


if __name__ == "__main__":
    main()
