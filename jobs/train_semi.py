"""spark-submit jobs/train_semi.py --splits SPLITS --pseudo-labels OUT --method NAME [--pretrained RUN_ID]
    [--semi-batches union|fixed_share] [--pseudo-loss same|logit_adjusted] [--pseudo-augment same|randaugment]
    [--rounds R] [--epochs N] [--num-processes K]

Semi-supervised training (Yang & Xu 2020): the labeled images and the pseudo-labeled images that
jobs/pseudolabel.py's selection policy kept are shuffled together into batches of 256 with one loss
(conf/stages/semi.yaml, as their train_semi.py), with any re-balancing recipe (conf/methods/NAME.yaml)
and optionally an SSP initialisation. --semi-batches fixed_share instead gives every batch a fixed
share of pseudo-labeled images (--unlabeled-share, --unlabeled-weight). --rounds R > 1 self-trains:
each round's model re-labels the pool and the next round trains on the new labels. Variants of ours
for the pseudo-labeled images: --pseudo-loss logit_adjusted trains them with CE(f + tau log prior)
(--pseudo-tau), --pseudo-augment randaugment adds RandAugment + Cutout to their crop and flip."""
from pipeline.cli import JobParser, run_spark_job, semi_layers
from pipeline.launch import result_summary
from pipeline.semi import launch_semi
from pipeline.records import TrainResult


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    parser.method_flag(exclude=("ssp_rotation",))
    parser.training_flags()
    parser.flag("--pseudo-labels", key="train.semi.pseudo_labels", metavar="OUT", help="a jobs/pseudolabel.py output")
    parser.flag("--pretrained", key="train.pretrained", metavar="RUN_ID|PATH",
                help="initialise the backbone from a run's checkpoint (SSP)")
    parser.flag("--semi-batches", key="train.semi.batches", help="union (the reference) or fixed_share")
    parser.flag("--unlabeled-share", key="train.semi.unlabeled_share",
                help="fixed_share: share of each batch that is pseudo-labeled")
    parser.flag("--unlabeled-weight", key="train.semi.unlabeled_weight", help="fixed_share: weight of the pseudo-labeled loss")
    parser.flag("--pseudo-loss", key="train.semi.loss",
                help="the pseudo-labeled rows' loss: same (the recipe's) or logit_adjusted")
    parser.flag("--pseudo-tau", key="train.semi.tau", help="logit_adjusted: tau in CE(f + tau log prior)")
    parser.flag("--pseudo-augment", key="train.semi.augment",
                help="same (the recipe's) or randaugment (RandAugment + Cutout on the pseudo-labeled images)")
    parser.flag("--rounds", key="train.semi.rounds", help="self-training rounds")
    args, cfg = parser.resolve(argv, required={"train.splits": "--splits SPLITS", "train.semi.pseudo_labels": "--pseudo-labels OUT"},
                               layers=semi_layers)
    return run_spark_job(cfg, launch_semi, result_summary, args.result, TrainResult)


if __name__ == "__main__":
    main()
