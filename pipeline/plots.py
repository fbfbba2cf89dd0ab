"""Figures logged with every run (matplotlib, no display)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_figure(cm, class_names):
    cm = np.asarray(cm, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4, 0.45 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (row-normalised)",
           xticks=range(len(class_names)), yticks=range(len(class_names)))
    ax.set_xticklabels(class_names, rotation=90)
    ax.set_yticklabels(class_names)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def per_class_figure(accuracy, train_counts, class_names):
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(class_names)), 4))
    x = np.arange(len(class_names))
    ax.bar(x, np.nan_to_num(np.asarray(accuracy, dtype=float)) * 100, color="tab:blue")
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), xticks=x, title="per-class accuracy vs training images")
    ax.set_xticklabels(class_names, rotation=90)
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
        if key in history[0]:
            b.plot(epochs, [h[key] * 100 for h in history], label=key)
    b.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    b.legend()
    fig.tight_layout()
    return fig
