"""Class names as real catalogues have them (ImageNet's "drum (musical)", product lists' "a&b", names
with $ or //) never break a run: per-class metrics are keyed by class index (final_test_metrics.json
and stream.json map indices to names), figures print names verbatim, the report escapes them. A
training and a stream over a data set with such names, end to end."""
import csv
import json

import mlflow

from jobs import ingest as ingest_job, longtail as longtail_job, pseudolabel as pseudolabel_job
from pipeline.config import resolve
from pipeline.train import fit
from tests.helpers import ROOT, image_bytes, write_tree

HOSTILE = ["drum (musical)", "Anna's $5 $\\frac{1}$", "a&b <script>x</script>", "x//y/../z", "ünï ✓ #1"]


def test_hostile_class_names_train_and_stream_end_to_end(spark, tmp_path):
    files, rows = {}, {"train": [], "test": []}
    for c, name in enumerate(HOSTILE):
        for k in range(20):
            files[f"img/{c}_{k}.png"] = image_bytes(seed=100 * c + k)
            rows["train" if k < 16 else "test"].append((f"img/{c}_{k}.png", name))
    write_tree(tmp_path, files)
    for split, split_rows in rows.items():
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("path", "label"), *split_rows])
    ingest_job.main(["--dataset", "manifest", "--source", str(tmp_path / "train.csv"), "--source",
                     str(tmp_path / "test.csv"), "--out", str(tmp_path / "data"), "--set", "ingest.label_type=name"])
    longtail_job.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "lt"), "--imbalance-ratio", "2",
                       "--labeled-max", "8", "--unlabeled-max", "4"])
    manifest = json.loads((tmp_path / "lt" / "manifest.json").read_text())
    assert sorted(manifest["class_names"]) == sorted(HOSTILE)

    cfg = resolve([str(ROOT / "conf/methods/ce.yaml")], [
        ("train.splits", str(tmp_path / "lt")), ("train.epochs", "1"), ("train.batch_size", "8"),
        ("train.data.augment", "none"), ("train.runtime.run_dir", str(tmp_path / "runs")),
        ("train.tracking.experiment", "hostile-names")])
    result = fit(cfg)  # ends with its figures, report and model: where such names used to fail
    client = mlflow.tracking.MlflowClient()
    metrics = client.get_run(result["run_id"]).data.metrics
    assert {f"final_test_class_acc_{i}" for i in range(len(HOSTILE))} <= set(metrics)
    final = mlflow.artifacts.load_dict(f"runs:/{result['run_id']}/final_test_metrics.json")
    assert final["class_names"] == manifest["class_names"]  # index -> name
    report = mlflow.artifacts.load_text(f"runs:/{result['run_id']}/report.html")
    assert "a&amp;b &lt;script&gt;x&lt;/script&gt;" in report and "<script>x</script>" not in report

    stream = pseudolabel_job.main(["--model", result["run_id"], "--input", str(tmp_path / "lt" / "unlabeled"),
                                   "--out", str(tmp_path / "pl")])
    assert stream["scored"] == 20 and stream["rejected"] == 0
    logged = client.get_run(stream["run_id"]).data.metrics
    assert {f"pl_count_{i}" for i in range(len(HOSTILE))} <= set(logged)
    info = mlflow.artifacts.load_dict(f"runs:/{stream['run_id']}/stream.json")
    assert info["class_names"] == manifest["class_names"]
