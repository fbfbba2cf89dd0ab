"""The per-run report: one self-contained HTML page (figures embedded, no network) logged with every
classifier run as report.html. It holds what a reader needs to judge and reuse the run: headline
metrics, provenance, the configuration, the data manifest, learning curves, a per-class table with
top-1/top-5, the confusion matrix, and where the exported model is."""
from __future__ import annotations

import base64
import html
import json
import math
from typing import Any

import yaml

from pipeline.metrics import shot_groups
from pipeline.records import Manifest
from pipeline.tracking import load_json_artifact, tracking_uri

HEADLINE = (("final_test_top1", "top-1"), ("final_test_top5", "top-5"), ("final_test_many_accuracy", "many-shot"),
            ("final_test_medium_accuracy", "medium-shot"), ("final_test_few_accuracy", "few-shot"),
            ("final_test_balanced_accuracy", "balanced accuracy"), ("final_test_macro_f1", "macro-F1"),
            ("final_test_ece", "ECE (15 bins)"))
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}img{max-width:100%}pre{background:#f7f7f7;padding:1em;
overflow:auto;font-size:.8em}.note{color:#666;font-size:.85em}code{background:#f1f1f1;padding:0 .2em}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 100:.1f}"


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    def cells(values, tag):
        return "".join(f'<{tag}{" class=l" if i < left else ""}>{_e(v)}</{tag}>' for i, v in enumerate(values))
    return (f"<table><tr>{cells(header, 'th')}</tr>"
            + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows) + "</table>")


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _shots(counts: list[int]) -> list[str]:
    """Each class's shot group (many / medium / few), as metrics.shot_groups defines them."""
    shot = [""] * len(counts)
    for group, classes in shot_groups(counts).items():
        for c in classes:
            shot[c] = group
    return shot


def figures(final: dict, history: list[dict]) -> dict:
    """The report's figures (matplotlib) from the final test metrics and the per-epoch history."""
    from pipeline import plots

    names = final["class_names"]
    return {"confusion_matrix": plots.confusion_figure(final["confusion"], names),
            "per_class_accuracy": plots.per_class_figure(final["per_class_accuracy"], final["train_counts"], names),
            "learning_curves": plots.curves_figure(history)}


def rebuild(run_id: str) -> str:
    """report.html of an earlier classifier run, again, from what the run logged (its checkpoint
    with the history, config and provenance; final_test_metrics.json; manifest.json; metrics and
    tags), logged to the run once more; returns the page."""
    import matplotlib.pyplot as plt
    import mlflow
    import torch

    from pipeline import plots
    from pipeline.pretrained import checkpoint_path

    mlflow.set_tracking_uri(tracking_uri())
    client = mlflow.tracking.MlflowClient()
    run = client.get_run(run_id)
    if run.data.tags.get("stage") not in ("base", "ssp", "semi"):
        raise ValueError(f"run {run_id} is a {run.data.tags.get('stage')!r} run, not a classifier: it has no report")
    checkpoint = checkpoint_path(run_id)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    final = load_json_artifact(run_id, "final_test_metrics.json")
    figs = figures(final, state["history"])
    pngs = {name: plots.png_bytes(fig) for name, fig in figs.items()}
    for fig in figs.values():
        plt.close(fig)
    page = render({"run_id": run_id, "run_name": run.info.run_name, "tags": run.data.tags,
                   "experiment": client.get_experiment(run.info.experiment_id).name,
                   "summary": dict(run.data.metrics), "provenance": state["provenance"], "config": state["config"],
                   "manifest": Manifest.from_dict(load_json_artifact(run_id, Manifest.FILE),
                                                  f"runs:/{run_id}/{Manifest.FILE}"), "final": final, "figures": pngs,
                   "history": state["history"], "model_uri": f"runs:/{run_id}/model", "checkpoint": checkpoint})
    client.log_text(run_id, page, "report.html")
    return page


def render(record: dict) -> str:
    """The report of one run. ``record``: run_id, run_name, experiment, tags, summary (final
    metrics), provenance, config, manifest, final (class_names, train_counts, per_class_accuracy,
    per_class_top5, confusion), figures ({name: PNG bytes}), model_uri, checkpoint."""
    s, final, tags = record["summary"], record["final"], record["tags"]
    names, counts = final["class_names"], final["train_counts"]
    support = [sum(row) for row in final["confusion"]]
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{_e(record['run_name'])}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{_e(record['run_name'])}</h1>",
             f"<p>MLflow run <code>{_e(record['run_id'])}</code> in experiment <b>{_e(record['experiment'])}</b>. "
             + ", ".join(f"{_e(k)}: <b>{_e(tags[k])}</b>" for k in ("dataset", "imbalance_ratio", "method", "stage",
                                                                     "seed", "model") if k in tags) + "</p>",
             "<h2>Final-epoch test metrics</h2>",
             _table([label for _, label in HEADLINE],
                    [[f"{s[k]:.3f}" if k == "final_test_ece" else _pct(s.get(k)) for k, _ in HEADLINE]], left=0),
             f"<p class=note>Accuracies in %, measured after the last epoch ({len(record.get('history', [])) or '?'} "
             f"epochs); no epoch was picked on the test split. For comparison with papers only: best test top-1 of "
             f"any epoch {_pct(s.get('best_on_test_epoch_top1'))} (epoch {_e(s.get('best_on_test_epoch', '-'))}).</p>",
             "<h2>Exported model</h2>",
             f"<p>MLflow model: <code>{_e(record['model_uri'])}</code> (images in [0, 1], logits out; the "
             f"decoder of an autoencoder is dropped), stored as an architecture spec and a state dict, no pickled "
             f"code. Load it with <code>pipeline.tracking.load_model(\"{_e(record['model_uri'])}\")</code> (or "
             f"<code>mlflow.pyfunc.load_model</code> where the project is installed), or score a Spark DataFrame with "
             f"<code>spark-submit jobs/pseudolabel.py --model {_e(record['run_id'])} ...</code>.<br>"
             f"Training checkpoint (resume, SSP initialisation): <code>{_e(record['checkpoint'])}</code></p>",
             "<h2>Learning curves</h2>", _image(record["figures"]["learning_curves"], "learning curves"),
             "<h2>Per-class accuracy</h2>",
             _table(["class", "training images", "shot", "test images", "top-1 (%)", "top-5 (%)"],
                    [[n, c, shot, sup, _pct(a), _pct(t5)] for n, c, shot, sup, a, t5 in
                     zip(names, counts, _shots(counts), support, final["per_class_accuracy"],
                         final["per_class_top5"])]),
             _image(record["figures"]["per_class_accuracy"], "per-class accuracy against training images"),
             "<h2>Confusion matrix</h2>", _image(record["figures"]["confusion_matrix"], "confusion matrix"),
             _table(["true \\ predicted", *names], [[n, *row] for n, row in zip(names, final["confusion"])]),
             "<h2>Data</h2>", _manifest(record["manifest"]),
             "<h2>Provenance</h2>",
             _table(["key", "value"], [[k, json.dumps(v) if isinstance(v, (dict, list)) else v]
                                       for k, v in record["provenance"].items()], left=2),
             "<h2>Configuration (resolved)</h2>",
             f"<pre>{_e(yaml.safe_dump(record['config'], sort_keys=False))}</pre>",
             "</body></html>"]
    return "\n".join(parts)


def _manifest(m: Manifest) -> str:
    splits = [k for k in ("labeled", "val", "unlabeled", "test") if k in m.class_counts]
    rows = [[n, *[m.class_counts[k][i] for k in splits]] for i, n in enumerate(m.class_names)]
    rows.append(["total", *[m.totals[k] for k in splits]])
    return (f"<p>Splits carved from <code>{_e(m.source['data'])}</code> ({_e(m.dataset)}), "
            f"imbalance ratio {_e(m.params.get('imbalance_ratio'))} ({_e(m.params.get('imbalance_type'))}), "
            f"measured {m.imbalance['ratio_measured']:.1f}; manifest sha256 <code>{_e(m.manifest_sha256)}</code>, "
            f"created {_e(m.created_at)} at commit <code>{_e(m.git_commit)}</code>.</p>"
            + _table(["class", *splits], rows))
