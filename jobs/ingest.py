"""spark-submit jobs/ingest.py --dataset NAME [--source PATH] --out DIR [--overwrite]

Ingest a data set into Parquet: DIR/images, DIR/_rejected (with reasons) and DIR/ingest.json."""
from pipeline.cli import JobParser, run_spark_job
from pipeline.ingest import run_ingest, summary
from pipeline.recipes import dataset_layers
from pipeline.records import Ingest


def main(argv=None) -> dict:
    parser = JobParser(__doc__)
    parser.flag("--dataset", key="ingest.dataset", help="digits, cifar10, cifar100, svhn, imagefolder, manifest")
    parser.flag("--source", key="ingest.source", append=True, help="input path or URI (repeatable)")
    parser.flag("--out", key="ingest.out", help="output directory (path or URI)")
    parser.flag("--image-size", key="ingest.image_size", nargs="+", metavar="PIXELS",
                help="reject images not of this size: H [W]")
    parser.flag("--channels", key="ingest.channels", help="reject images without this many channels")
    parser.flag("--split", key="ingest.split", help="manifest: the split its rows belong to")
    parser.flag("--root", key="ingest.root", help="manifest: base of relative paths")
    parser.flag("--overwrite", key="ingest.overwrite", switch=True, help="replace DIR atomically")
    args, cfg = parser.resolve(argv, required={"ingest.out": "--out DIR"}, layers=dataset_layers)
    return run_spark_job(cfg, run_ingest, summary, args.result, Ingest)


if __name__ == "__main__":
    main()
