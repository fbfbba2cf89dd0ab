"""spark-submit jobs/pseudolabel.py --model RUN_ID|MODEL_URI --input DIR --out OUT [--checkpoint CKPT]
    [--trigger available-now|continuous] [--max-files-per-trigger N] [--select POLICY]
    [--adjust none|em|bbse [--adjust-tau T] [--refine darp] [--val DIR]] [--precision fp32|bf16]

Score the unlabeled pool with a base classifier from MLflow as a Structured Streaming query, and
write pseudo-labels (OUT/labels), their class balance (OUT/balance, read by the dashboard) and a
"pseudolabel" MLflow run. Killed and started again with the same checkpoint, it resumes: every
image is labeled exactly once. ``--adjust em|bbse`` corrects the predictions for the pool's class
prior as estimated so far (EM; BBSE on a held-out labeled split) before the policy selects; the EM
estimate (and BBSE's, when a held-out split is there) is recorded with every micro-batch either way.
``--precision bf16`` scores in bf16 autocast (about 3x fp32 on a CPU with AVX512-BF16), after checking
it against fp32 on the splits' test images (agreement and both top-1s, in stream.json and MLflow)."""
from pipeline.cli import JobParser, run_spark_job
from pipeline.pseudolabel.policies import POLICIES
from pipeline.records import StreamResult
from streaming.pseudolabel import run_pseudolabel, summary


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    parser.flag("--model", key="pseudolabel.model", metavar="RUN_ID|MODEL_URI",
                help="a jobs/train.py run id, or runs:/<id>/model, models:/<name>/<version>")
    parser.flag("--input", key="pseudolabel.input", metavar="DIR", help="the unlabeled Parquet pool (SPLITS/unlabeled)")
    parser.flag("--out", key="pseudolabel.out", metavar="OUT")
    parser.flag("--checkpoint", key="pseudolabel.checkpoint", metavar="CKPT", help="default: OUT/_checkpoint")
    parser.flag("--truth", key="pseudolabel.truth", metavar="DIR",
                help="hidden labels (id, label) for precision/recall; default: INPUT/../unlabeled_truth")
    parser.flag("--trigger", key="pseudolabel.trigger", choices=["available-now", "continuous"])
    parser.flag("--interval", key="pseudolabel.interval_s", metavar="SECONDS", help="continuous: trigger interval")
    parser.flag("--timeout", key="pseudolabel.timeout_s", metavar="SECONDS", help="continuous: stop after this long")
    parser.flag("--max-files-per-trigger", key="pseudolabel.max_files_per_trigger", metavar="N")
    parser.flag("--select", key="pseudolabel.select", metavar="POLICY", help=f"one of {', '.join(POLICIES)}")
    parser.flag("--tau", key="pseudolabel.tau")
    parser.flag("--top-k", key="pseudolabel.top_k")
    parser.flag("--adjust", key="pseudolabel.adjust", choices=["none", "em", "bbse"],
                help="correct the predictions for the pool prior estimated by EM or BBSE before selecting")
    parser.flag("--adjust-tau", key="pseudolabel.adjust_tau", metavar="T", help="p * (pi_pool / pi_labeled) ** T")
    parser.flag("--refine", key="pseudolabel.refine", choices=["none", "darp"],
                help="darp: refine the soft labels to the estimated class counts before selecting (with --adjust)")
    parser.flag("--val", key="pseudolabel.val", metavar="DIR",
                help="held-out labeled split for BBSE; default: INPUT/../val when it has images")
    parser.flag("--precision", key="pseudolabel.precision", choices=["fp32", "bf16"],
                help="the scoring forward pass; bf16 is checked against fp32 on the splits' test images first")
    parser.flag("--experiment", key="pseudolabel.experiment", help="MLflow experiment; default: the model's")
    args, cfg = parser.resolve(argv, required={"pseudolabel.model": "--model", "pseudolabel.input": "--input DIR",
                                            "pseudolabel.out": "--out OUT"})
    return run_spark_job(cfg, run_pseudolabel, summary, args.result, StreamResult)


if __name__ == "__main__":
    main()
