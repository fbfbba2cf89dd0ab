"""Results tables from the tracked runs: the paper-style comparison of methods."""
from __future__ import annotations

import math

import pandas as pd

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


def finished_runs(experiment: str, stages: tuple[str, ...] = CLASSIFIER_STAGES) -> pd.DataFrame:
    """The latest finished run of each (dataset, ratio, method, setting, seed) in ``experiment``."""
    import mlflow

    from pipeline.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="attributes.status = 'FINISHED'")
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
