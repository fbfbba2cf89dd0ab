"""spark-submit jobs/longtail.py --data DIR --out SPLITS --imbalance-ratio RHO --imbalance-type exp|step|none --seed S

Carve long-tailed labeled, unlabeled and validation splits from an ingest; copy its test split."""
from pipeline.cli import JobParser, run_spark_job
from pipeline.longtail.splits import run_longtail, summary
from pipeline.records import Manifest


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    parser.flag("--data", key="longtail.data", help="an ingest output directory")
    parser.flag("--out", key="longtail.out", help="the splits directory to write")
    parser.flag("--imbalance-ratio", key="longtail.imbalance_ratio", metavar="RHO")
    parser.flag("--imbalance-type", key="longtail.imbalance_type", help="exp, step or none")
    parser.flag("--labeled-max", key="longtail.labeled_max", metavar="N1", help="images of the head class")
    parser.flag("--labeled-ids", key="longtail.labeled_ids", metavar="LIST",
                help="a split list: the labeled split is the ids of this file (one 'ID [CLASS]' per line)")
    parser.flag("--unlabeled-max", key="longtail.unlabeled_max", metavar="M1", help="head of the unlabeled pool")
    parser.flag("--unlabeled-ratio", key="longtail.unlabeled_ratio", metavar="RHO_U",
                help="imbalance of the pool; negative reverses the class order")
    parser.flag("--val-per-class", key="longtail.val_per_class", metavar="K")
    parser.flag("--seed", key="longtail.seed")
    parser.flag("--draw", key="longtail.draw",
                help="generator, or imbalance_cifar: the legacy RandomState draw of LDAM-DRW / Yang & Xu")
    parser.flag("--overwrite", key="longtail.overwrite", switch=True, help="replace SPLITS atomically")
    args, cfg = parser.resolve(argv, required={"longtail.data": "--data DIR", "longtail.out": "--out SPLITS"})
    return run_spark_job(cfg, run_longtail, summary, args.result, Manifest)


if __name__ == "__main__":
    main()
