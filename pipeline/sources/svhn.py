"""SVHN cropped digits: the official train_32x32.mat / test_32x32.mat / extra_32x32.mat files.
Labels are 1..10 with 10 standing for the digit 0, mapped to 0..9 as torchvision does."""
from __future__ import annotations

import io

import numpy as np

from pipeline import fs
from pipeline.config import IngestConfig
from pipeline.sources import Plan, Source, SourceError, TaskContext, image_row, register
from pipeline.sources.download import torchvision_download

SPLIT_FILES = {"train_32x32.mat": "train", "test_32x32.mat": "test", "extra_32x32.mat": "extra"}


@register("svhn")
class Svhn(Source):
    size = (32, 32)
    channels = 3
    normalization = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # YyzHarry/imbalanced-semi-self train.py

    def plan(self, cfg: IngestConfig, parallelism: int) -> Plan:
        sources = cfg.source
        if not sources:
            root = cfg.download_dir
            for split in ("train", "test"):
                torchvision_download("SVHN", root, "train_32x32.mat and test_32x32.mat from "
                                     "http://ufldl.stanford.edu/housenumbers/", split=split)
            sources = [root]
        files = []
        for src in map(fs.normalize, sources):
            if fs.is_dir(src):
                files += [fs.join(src, name) for name in SPLIT_FILES if fs.exists(fs.join(src, name))]
            elif fs.name(src) in SPLIT_FILES:
                files.append(src)
            else:
                raise SourceError(f"svhn: {src} is neither a folder nor one of {', '.join(SPLIT_FILES)}")
        if not files:
            raise SourceError(f"svhn: none of {', '.join(SPLIT_FILES)} found in {', '.join(sources)}")
        units = [{"file": f, "split": SPLIT_FILES[fs.name(f)]} for f in files]
        return Plan([str(d) for d in range(10)], units, {"files": files})

    def read(self, unit: dict, ctx: TaskContext):
        from scipy.io import loadmat

        try:
            mat = loadmat(io.BytesIO(fs.read_bytes(unit["file"])))
            images = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2)  # H W C N -> N H W C
            labels = np.asarray(mat["y"]).reshape(-1)
        except Exception as e:
            raise SourceError(f"{unit['file']}: {type(e).__name__}: {e}") from None
        if len(labels) != len(images):
            raise SourceError(f"{unit['file']}: {len(images)} images but {len(labels)} labels")
        stem = fs.name(unit["file"]).removesuffix(".mat")
        for i, (pixels, label) in enumerate(zip(images, labels)):
            label = int(label)
            label = label % 10 if 1 <= label <= 10 else f"{label} (SVHN labels are 1..10)"
            yield image_row(ctx, f"{stem}/{i:06d}", unit["split"], label,
                            f"{unit['file']}[{i}]", pixels=np.ascontiguousarray(pixels))
