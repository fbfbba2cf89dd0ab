"""Results tables from the tracked runs: the paper-style comparison of methods."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline import fs
from pipeline.tracking import load_json_artifact, search_runs

KEYS = ("dataset", "imbalance_ratio", "method", "setting")
CLASSIFIER_STAGES = ("base", "ssp", "semi")  # the stages that end in a classifier on the test split
COLUMNS = {  # metric -> column title; all are final-epoch test figures but the last
    "final_test_top1": "top-1", "final_test_many_accuracy": "many", "final_test_medium_accuracy": "medium",
    "final_test_few_accuracy": "few", "final_test_balanced_accuracy": "balanced", "final_test_ece": "ECE",
    "best_on_test_epoch_top1": "best epoch on test (papers only)",
}


def setting(tags: dict) -> str:
    """How a classifier was trained beyond its recipe: base, ssp (rotation pre-trained), or semi with
    its pseudo-label policy, SSP initialisation and self-training round."""
    stage = tags.get("stage") or "base"
    if stage != "semi":
        return stage
    text = f"semi {tags.get('policy') or ''}".strip()
    if isinstance(tags.get("pretrained"), str) and tags["pretrained"]:
        text += " + ssp"
    if str(tags.get("round") or "1") != "1":
        text += f" round {tags['round']}"
    return text


def finished_runs(experiment: str, stages: tuple[str, ...] = CLASSIFIER_STAGES, sweep: str = "") -> pd.DataFrame:
    """The latest finished run of each (dataset, ratio, method, setting, seed) in ``experiment``
    (of one sweep only, if ``sweep`` names it)."""

    runs = search_runs(experiment, "attributes.status = 'FINISHED'"
                       + (f" and tags.sweep = '{sweep}'" if sweep else ""))
    if runs.empty or "tags.stage" not in runs:
        return runs.iloc[0:0]
    runs = runs[runs["tags.stage"].isin(stages)].copy()
    tag_columns = [c for c in runs.columns if c.startswith("tags.")]
    runs["tags.setting"] = [setting({c[5:]: row[c] for c in tag_columns}) for _, row in runs.iterrows()]
    return runs.sort_values("start_time").groupby([f"tags.{k}" for k in (*KEYS, "seed")]).tail(1)


def compare(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each metric, one row per (dataset, ratio, method)."""
    rows = []
    for key, group in runs.groupby([f"tags.{k}" for k in KEYS], sort=True):
        row = dict(zip(KEYS, key), seeds=len(group))
        for metric in COLUMNS:
            values = group.get(f"metrics.{metric}", pd.Series(dtype=float)).dropna()
            row[metric] = values.mean() if len(values) else math.nan
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    def cell(row, metric):
        mean, std = row[metric], row[f"{metric}_std"]
        if math.isnan(mean):
            return "-"
        if metric == "final_test_ece":  # a fraction, not a percentage
            return f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")
        return f"{mean * 100:.1f}" + ("" if math.isnan(std) else f" ± {std * 100:.1f}")

    header = ["dataset", "rho", "method", "setting", "seeds", *COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["dataset"], row["imbalance_ratio"], row["method"], row["setting"], str(row["seeds"])]
        lines.append("| " + " | ".join(cells + [cell(row, m) for m in COLUMNS]) + " |")
    return "\n".join(lines)


def label(method: str, setting_: str) -> str:
    """How a compared method is named in plots: its recipe, and its setting unless plain."""
    return method if setting_ == "base" else f"{method} ({setting_})"


def per_class_records(runs: pd.DataFrame) -> tuple[dict, list[str]]:
    """{(dataset, ratio): {"class_names", "train_counts", "accuracy": {label: [per-seed arrays]},
    "confusion": {label: [per-seed matrices]}}} from each run's final_test_metrics.json, and the
    runs that have no such file (listed, not silently left out)."""

    groups: dict = {}
    missing = []
    for _, run in runs.iterrows():
        try:
            final = load_json_artifact(run["run_id"], "final_test_metrics.json")
        except Exception:  # MLflow raises several types for an absent artifact
            missing.append(run["run_id"])
            continue
        group = groups.setdefault((run["tags.dataset"], run["tags.imbalance_ratio"]), {
            "class_names": final["class_names"], "train_counts": final["train_counts"], "accuracy": {},
            "confusion": {}})
        key = label(run["tags.method"], run["tags.setting"])
        group["accuracy"].setdefault(key, []).append(np.asarray(final["per_class_accuracy"], dtype=float))
        group["confusion"].setdefault(key, []).append(np.asarray(final["confusion"], dtype=float))
    return groups, missing


def publish(runs: pd.DataFrame, out: str, tracker=None) -> dict:
    """Write the comparison of ``runs`` into ``out``: compare.md, compare.csv and the plots
    (accuracy vs imbalance ratio per method; per-class accuracy against the class counts; confusion
    matrices side by side, seeds averaged), and log them to ``tracker``'s run under compare/.
    Returns {what: file}."""

    from pipeline import plots

    fsys, root = fs.filesystem(out)
    fsys.create_dir(root, recursive=True)
    table = compare(runs)
    files = {"markdown": fs.join(out, "compare.md"), "csv": fs.join(out, "compare.csv")}
    fs.write_text(files["markdown"], markdown(table) + "\n")
    fs.write_text(files["csv"], table.to_csv(index=False))

    figures = {}
    for dataset, rows in table.groupby("dataset"):
        lines: dict = {}
        for _, row in rows.iterrows():
            lines.setdefault(label(row["method"], row["setting"]), []).append(
                (float(row["imbalance_ratio"]), row["final_test_top1"], row["final_test_top1_std"]))
        figures[f"accuracy_vs_ratio_{dataset}"] = plots.accuracy_vs_ratio_figure(
            lines, f"{dataset}: final test top-1 vs imbalance ratio")
    groups, missing = per_class_records(runs)
    for (dataset, ratio), g in sorted(groups.items()):
        name = f"{dataset}_r{ratio}"
        accuracy = {k: np.nanmean(np.stack(v), axis=0) for k, v in g["accuracy"].items()}
        figures[f"per_class_{name}"] = plots.per_class_comparison_figure(
            accuracy, g["train_counts"], g["class_names"], f"{dataset}, rho {ratio}: per-class test accuracy")
        confusion = {k: np.mean(np.stack(v), axis=0) for k, v in g["confusion"].items()}
        figures[f"confusion_{name}"] = plots.confusion_grid_figure(
            confusion, g["class_names"], f"{dataset}, rho {ratio}: confusion matrices (row-normalised)")
    for name, fig in figures.items():
        files[name] = fs.join(out, f"{name}.png")
        fs.write_bytes(files[name], plots.png_bytes(fig))
        plots.plt.close(fig)
    if missing:
        files["missing_per_class"] = missing
        print(f"warning: {len(missing)} runs have no final_test_metrics.json and are left out of the "
              f"per-class and confusion plots: {', '.join(missing)}")
    if tracker is not None:
        for key, file in files.items():
            if key != "missing_per_class":
                tracker.log_artifact(file, "compare")
    return files
