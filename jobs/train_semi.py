"""spark-submit jobs/train_semi.py --splits SPLITS --pseudo-labels OUT --method NAME [--pretrained RUN_ID]
    [--unlabeled-share 0.5] [--unlabeled-weight 1] [--rounds R] [--epochs N] [--num-processes K]

Semi-supervised training (Yang & Xu 2020): every batch mixes labeled images and the pseudo-labeled
images that jobs/pseudolabel.py's selection policy kept, with any re-balancing recipe
(conf/methods/NAME.yaml) and optionally an SSP initialisation. --rounds R > 1 self-trains: each
round's model re-labels the pool and the next round trains on the new labels."""
from pipeline.cli import JobParser, recipe_layers, run_spark_job
from pipeline.launch import launch_semi, result_summary


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    parser.method_flag(exclude=("ssp_rotation",))
    parser.training_flags()
    parser.flag("--pseudo-labels", key="train.pseudo_labels", metavar="OUT", help="a jobs/pseudolabel.py output")
    parser.flag("--pretrained", key="train.pretrained", metavar="RUN_ID|PATH",
                help="initialise the backbone from a run's checkpoint (SSP)")
    parser.flag("--unlabeled-share", key="train.unlabeled_share", help="share of each batch that is pseudo-labeled")
    parser.flag("--unlabeled-weight", key="train.unlabeled_weight", help="weight of the pseudo-labeled loss")
    parser.flag("--rounds", key="train.self_training_rounds", help="self-training rounds")
    args, cfg = parser.resolve(argv, required={"train.splits": "--splits SPLITS", "train.pseudo_labels": "--pseudo-labels OUT"},
                               layers=recipe_layers)
    return run_spark_job(cfg, launch_semi, result_summary, args.result)


if __name__ == "__main__":
    main()
