"""Figures logged with every run (matplotlib, no display)."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import io


def literal(names) -> list[str]:
    """Class names as matplotlib prints them verbatim: a name with two $ would be parsed as TeX (and may
    not parse, ending the run that draws it)."""
    return [str(n).replace("$", r"\$") for n in names]


def confusion_figure(cm, class_names):
    cm = np.asarray(cm, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4, 0.45 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (row-normalised)",
           xticks=range(len(class_names)), yticks=range(len(class_names)))
    ax.set_xticklabels(literal(class_names), rotation=90)
    ax.set_yticklabels(literal(class_names))
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def per_class_figure(accuracy, train_counts, class_names):
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(class_names)), 4))
    x = np.arange(len(class_names))
    ax.bar(x, np.nan_to_num(np.asarray(accuracy, dtype=float)) * 100, color="tab:blue")
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), xticks=x, title="per-class accuracy vs training images")
    ax.set_xticklabels(literal(class_names), rotation=90)
    ax2 = ax.twinx()
    ax2.plot(x, train_counts, color="tab:red", marker="o")
    ax2.set_yscale("log")
    ax2.set_ylabel("training images (log)", color="tab:red")
    fig.tight_layout()
    return fig


def curves_figure(history):
    epochs = [h["epoch"] + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history])
    a.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key in ("train_top1", "test_top1", "val_top1"):
        if key in history[0]:  # the evaluated epochs only (train.eval_every)
            points = [(e, h[key] * 100) for e, h in zip(epochs, history) if math.isfinite(h[key])]
            b.plot(*zip(*points), label=key)
    b.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    b.legend()
    fig.tight_layout()
    return fig


def png_bytes(fig) -> bytes:
    """The figure as PNG (for a self-contained report); the figure stays open."""

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# --- comparisons of runs (jobs/compare.py, jobs/sweep.py) --------------------------------------

def accuracy_vs_ratio_figure(lines: dict[str, list[tuple[float, float, float]]], title: str):
    """Final top-1 (mean +- std over seeds) against the imbalance ratio, one line per method.
    ``lines``: label -> [(ratio, mean, std)] with accuracies in [0, 1]."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, points in sorted(lines.items()):
        points = sorted(points)
        x = [p[0] for p in points]
        ax.errorbar(x, [p[1] * 100 for p in points], yerr=[0 if np.isnan(p[2]) else p[2] * 100 for p in points],
                    marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ratios = sorted({p[0] for points in lines.values() for p in points})
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.minorticks_off()
    ax.set(xlabel="imbalance ratio (log)", ylabel="final test top-1 (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_class_comparison_figure(accuracy: dict[str, np.ndarray], train_counts, class_names, title: str):
    """Grouped bars: each compared method's per-class test accuracy; the training images per class
    on a log axis beside them."""
    labels = sorted(accuracy)
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(class_names) * max(1, len(labels)) ** 0.5), 4.5))
    for i, label in enumerate(labels):
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(np.asarray(accuracy[label], dtype=float)) * 100,
               width, label=label)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), xticks=x, title=title)
    ax.set_xticklabels(literal(class_names), rotation=90)
    ax2 = ax.twinx()
    ax2.plot(x, train_counts, color="black", marker="o", linestyle="--", label="training images")
    ax2.set_yscale("log")
    ax2.set_ylabel("training images (log)")
    handles = ax.get_legend_handles_labels()
    extra = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def confusion_grid_figure(matrices: dict[str, np.ndarray], class_names, title: str):
    """Row-normalised confusion matrices of the compared methods, side by side (4 per row)."""
    labels = sorted(matrices)
    cols = min(4, len(labels))
    rows = (len(labels) + cols - 1) // cols
    size = max(3.0, 0.3 * len(class_names))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1, size * rows + 0.8), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    im = None
    for ax, label in zip(axes.flat, labels):
        cm = np.asarray(matrices[label], dtype=np.float64)
        im = ax.imshow(cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
        ticks = range(len(class_names)) if len(class_names) <= 20 else []
        ax.set(xticks=ticks, yticks=ticks, xlabel="predicted")
        if ticks:
            ax.set_xticklabels(class_names, rotation=90, fontsize=7)
            ax.set_yticklabels(class_names, fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("true")
    fig.suptitle(title)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    return fig
