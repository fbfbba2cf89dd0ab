"""scikit-learn's bundled handwritten digits (1,797 8x8 grey images): real data, no network."""
from __future__ import annotations

import numpy as np

from pipeline.config import IngestConfig
from pipeline.longtail.profiles import ids_sha256, stratified_holdout
from pipeline.sources import Plan, Source, TaskContext, image_row, register


def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16 counts of set bits; scale to the uint8 range every other data set uses.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # N x 8 x 8 x 1
    return pixels, digits.target.astype(np.int64)


def _ids(n: int) -> list[str]:
    return [f"{i:04d}" for i in range(n)]


@register("digits")
class Digits(Source):
    size = (8, 8)
    channels = 1

    def plan(self, cfg: IngestConfig, parallelism: int) -> Plan:
        _, labels = _load()
        test = stratified_holdout(labels, cfg.test_fraction, np.random.default_rng(cfg.seed))
        test_ids = np.asarray(_ids(len(labels)))[test].tolist()
        info = {"split": {"test_fraction": cfg.test_fraction, "seed": cfg.seed, "stratified": True,
                          "test_ids_sha256": ids_sha256(test_ids)}}
        units = [{"split": s, "test_fraction": cfg.test_fraction, "seed": cfg.seed} for s in ("train", "test")]
        return Plan([str(d) for d in range(10)], units, info, expected_records=len(labels))

    def read(self, unit: dict, ctx: TaskContext):
        pixels, labels = _load()
        test = stratified_holdout(labels, unit["test_fraction"], np.random.default_rng(unit["seed"]))
        want_test = unit["split"] == "test"
        for i, image_id in enumerate(_ids(len(labels))):
            if test[i] == want_test:
                yield image_row(ctx, image_id, unit["split"], int(labels[i]), f"sklearn.datasets.load_digits[{i}]",
                                pixels=pixels[i])
