"""spark-submit jobs/pretrain.py --splits SPLITS [--epochs N] [--num-processes K] [--include-unlabeled]

Self-supervised pre-training (SSP) by rotation prediction on the labeled split's images (and the
unlabeled pool's, if asked), launched through TorchDistributor and tracked in MLflow (stage
"pretrain"). Use the run id with jobs/train.py --pretrained."""
from pathlib import Path

from pipeline.cli import JobParser, run_spark_job
from pipeline.launch import launch_fit, result_summary

RECIPE = Path(__file__).resolve().parent.parent / "conf" / "methods" / "ssp_rotation.yaml"


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    parser.flag("--splits", key="train.splits", help="a jobs/longtail.py output directory")
    parser.flag("--model", key="train.model")
    parser.flag("--epochs", key="train.epochs")
    parser.flag("--num-processes", key="train.num_processes")
    parser.flag("--experiment", key="train.experiment", help="MLflow experiment")
    parser.flag("--seed", key="train.seed")
    parser.flag("--include-unlabeled", key="train.pretrain_unlabeled", switch=True,
                help="also learn from the unlabeled pool's images")
    parser.flag("--resume", key="train.resume", switch=True, help="continue from the run's last checkpoint")
    _, cfg = parser.resolve(argv, required={"train.splits": "--splits SPLITS"}, layers=lambda c: [str(RECIPE)])
    cfg.train.method = cfg.train.method or "ssp_rotation"
    return run_spark_job(cfg, launch_fit, result_summary)


if __name__ == "__main__":
    main()
