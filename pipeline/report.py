"""Results tables from the tracked runs: the paper-style comparison of methods."""
from __future__ import annotations

import math

import pandas as pd

KEYS = ("dataset", "imbalance_ratio", "method")
COLUMNS = {  # metric -> column title; all are final-epoch test figures but the last
    "final_test_top1": "top-1", "final_test_many_accuracy": "many", "final_test_medium_accuracy": "medium",
    "final_test_few_accuracy": "few", "final_test_balanced_accuracy": "balanced", "final_test_ece": "ECE",
    "best_on_test_epoch_top1": "best epoch on test (papers only)",
}


def finished_runs(experiment: str, stage: str = "base") -> pd.DataFrame:
    """The latest finished run of each (dataset, ratio, method, seed) in ``experiment``."""
    import mlflow

    from pipeline.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string=f"attributes.status = 'FINISHED' "
                                                                          f"and tags.stage = '{stage}'")
    if runs.empty:
        return runs
    runs = runs.sort_values("start_time").groupby([f"tags.{k}" for k in (*KEYS, "seed")]).tail(1)
    return runs


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

    header = ["dataset", "rho", "method", "seeds", *COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["dataset"], row["imbalance_ratio"], row["method"], str(row["seeds"])]
        lines.append("| " + " | ".join(cells + [cell(row, m) for m in COLUMNS]) + " |")
    return "\n".join(lines)
