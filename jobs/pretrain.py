"""spark-submit jobs/pretrain.py --splits SPLITS [--epochs N] [--num-processes K] [--include-unlabeled]

Self-supervised pre-training (SSP) by rotation prediction on the labeled split's images (and the
unlabeled pool's, if asked), launched through TorchDistributor and tracked in MLflow (stage
"pretrain"). Use the run id with jobs/train.py --pretrained."""
from pipeline.cli import JobParser, run_spark_job
from pipeline.recipes import RECIPES
from pipeline.launch import launch_fit, result_summary
from pipeline.records import TrainResult


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    parser.training_flags()
    parser.flag("--include-unlabeled", key="train.ssp.unlabeled", switch=True,
                help="also learn from the unlabeled pool's images")
    args, cfg = parser.resolve(argv, required={"train.splits": "--splits SPLITS"}, layers=lambda c: [str(RECIPES / "ssp_rotation.yaml")])
    return run_spark_job(cfg, launch_fit, result_summary, args.result, TrainResult)


if __name__ == "__main__":
    main()
