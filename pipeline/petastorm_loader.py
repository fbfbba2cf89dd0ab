"""The streaming data path: petastorm reads the split's Parquet row groups, sharded by rank, and
decodes images in its worker threads; batches are shuffled through a buffer and augmented like the
in-memory path. petastorm is confined to this module.

Row-group shards can be uneven (Spark writes a file per partition), and DDP hangs when one rank
runs out of batches first, so the reader repeats its shard and every rank takes the same number
of steps per epoch: (rows // world) // batch."""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import torch

from pipeline import fs
from pipeline.config import TrainConfig
from pipeline.data import Augment, DataError, epoch_generator, read_table

BUFFER_BATCHES = 8  # shuffle buffer, in batches


def _decode_frame(shape):
    def decode(frame):  # runs in petastorm's workers: self-contained, returns exactly selected_fields
        import numpy as np

        from pipeline.images import decode as decode_image

        h, w, c = shape
        frame["pixels"] = [decode_image(img, fmt, h, w, c).reshape(-1)
                           for img, fmt in zip(frame["image"], frame["image_format"])]
        frame["label"] = frame["label"].fillna(-1).astype(np.int64)
        return frame[["id", "pixels", "label"]]
    return decode


class PetastormLoader:
    def __init__(self, split_dir: str, counts, cfg: TrainConfig, augment: Augment, rank: int = 0, world: int = 1,
                 workers: int = 2):
        if cfg.sampler.name != "random":
            raise DataError(f"the petastorm loader streams row groups and cannot draw sampler "
                            f"{cfg.sampler.name!r}; use train.data.loader=memory")
        meta = read_table(split_dir, columns=["height", "width", "channels"])
        shapes = set(zip(*(meta.column(k).to_pylist() for k in ("height", "width", "channels"))))
        if len(shapes) != 1:
            raise DataError(f"{split_dir}: images of {len(shapes)} shapes {sorted(shapes)[:5]}; batching needs one")
        self.shape = shapes.pop()
        self.url = fs.spark_path(split_dir)
        self.cfg, self.augment, self.rank, self.world, self.workers = cfg, augment, rank, world, workers
        self.batch = max(1, cfg.batch_size // world)
        self.steps = (meta.num_rows // world) // self.batch
        if self.steps == 0:
            raise DataError(f"{split_dir}: {meta.num_rows} rows are too few for {world} processes x batch {self.batch}")
        self._rows: Iterator | None = None
        self._reader = None
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.steps

    def to(self, device) -> "PetastormLoader":
        self.device = torch.device(device)
        return self

    def _open(self):
        from petastorm import make_batch_reader
        from petastorm.transform import TransformSpec

        h, w, c = self.shape
        spec = TransformSpec(_decode_frame(self.shape), edit_fields=[("pixels", np.uint8, (h * w * c,), False)],
                             selected_fields=["id", "pixels", "label"])
        warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")  # pyarrow legacy API
        try:
            self._reader = make_batch_reader(self.url, cur_shard=self.rank, shard_count=self.world, num_epochs=None,
                                             shuffle_row_groups=True, seed=self.cfg.seed, transform_spec=spec,
                                             reader_pool_type="thread", workers_count=self.workers)
        except Exception as e:  # e.g. fewer row groups than processes
            raise DataError(f"{self.url}: petastorm cannot shard the split for {self.world} processes: {e}") from None
        rng = np.random.default_rng([self.cfg.seed, self.rank])

        def rows():
            buffer_p, buffer_l, buffer_i = [], [], []
            for group in self._reader:
                buffer_p.append(np.asarray(group.pixels))
                buffer_l.append(np.asarray(group.label))
                buffer_i.append(np.asarray(group.id))
                if sum(len(b) for b in buffer_l) >= BUFFER_BATCHES * self.batch:
                    pixels, labels, ids = (np.concatenate(b) for b in (buffer_p, buffer_l, buffer_i))
                    order = rng.permutation(len(labels))
                    yield from zip(pixels[order], labels[order], ids[order])
                    buffer_p, buffer_l, buffer_i = [], [], []
        self._rows = rows()

    def epoch(self, epoch: int, with_ids: bool = False):
        """``steps`` batches of (images, labels) (and ids when asked) from this rank's shard."""
        if self._rows is None:
            self._open()
        gen = epoch_generator(self.cfg.seed, epoch, self.rank)
        h, w, c = self.shape
        for _ in range(self.steps):
            chunk = [next(self._rows) for _ in range(self.batch)]
            pixels = torch.from_numpy(np.stack([p for p, _, _ in chunk]).reshape(-1, h, w, c)).permute(0, 3, 1, 2)
            labels = torch.tensor([l for _, l, _ in chunk], dtype=torch.int64)
            x = self.augment(pixels.to(self.device), gen)
            yield (x, labels.to(self.device), [i for _, _, i in chunk]) if with_ids else (x, labels.to(self.device))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader.join()
            self._reader = None
