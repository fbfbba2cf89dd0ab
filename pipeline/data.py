"""Training data behind one interface: a loader yields (images float NCHW normalised, labels) batches
for an epoch, this process's shard only.

* ``MemoryLoader``: the split decoded once into a uint8 tensor (on the GPU when training there),
  sampling, random crops and flips done on the device, vectorised (as the fastest CIFAR trainers do).
* ``PetastormLoader`` (pipeline/petastorm_loader.py): streams Parquet row groups sharded by rank,
  for data that does not fit.
``pipeline.loaders`` builds either (``make_loader``) and picks by decoded size when ``train.data.loader``
is ``auto`` (``choose_loader``); this module does not import the petastorm one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch.nn import functional as F

from pipeline.config import TrainConfig
from pipeline.images import decode
from pipeline.samplers import epoch_indices
from pipeline.strong_augment import cutout, randaugment
from pipeline.tables import DataError, parquet_files, read_table  # noqa: F401  (the split readers)


@dataclass
class ImageSet:
    images: torch.Tensor  # N x C x H x W, uint8
    labels: torch.Tensor  # N, int64; -1 where the label is hidden or absent
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device), self.ids)


def load_split(split_dir: str, max_rows: Optional[int] = None) -> ImageSet:
    """Decode a split (or its first ``max_rows`` rows) into memory. Every image must have the same
    shape (the message lists them)."""
    table = read_table(split_dir, max_rows=max_rows)
    shapes = set(zip(table.column("height").to_pylist(), table.column("width").to_pylist(),
                     table.column("channels").to_pylist()))
    if len(shapes) != 1:
        raise DataError(f"{split_dir}: images of {len(shapes)} shapes {sorted(shapes)[:5]}; the in-memory loader "
                        f"needs one (ingest with --image-size to enforce it)")
    (h, w, c), = shapes
    rows = table.select(["image", "image_format"]).to_pylist()
    pixels = np.stack([decode(r["image"], r["image_format"], h, w, c) for r in rows]) if rows else \
        np.zeros((0, h, w, c), np.uint8)
    labels = [-1 if v is None else v for v in table.column("label").to_pylist()]
    return ImageSet(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
                    torch.tensor(labels, dtype=torch.int64), table.column("id").to_pylist())


ROTATIONS = ("0", "90", "180", "270")  # degrees counter-clockwise: the classes of rotation SSP


def _square(images: torch.Tensor) -> None:
    if images.shape[-1] != images.shape[-2]:
        raise DataError(f"rotation pre-training needs square images, got {tuple(images.shape[-2:])}")


def rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image at 0/90/180/270 degrees, and the rotation index as label (Gidaris et al. 2018)."""
    _square(images)
    x = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(len(ROTATIONS))])
    return x, torch.arange(len(ROTATIONS), device=images.device).repeat_interleave(len(images))


def random_rotations(images: torch.Tensor, gen: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image once, at a random rotation, and that rotation as label, as Yang & Xu's
    pretrain_rot.py draws them: the labels are a random permutation of 0, 1, 2, 3 repeated, cut to
    the batch, so every rotation appears equally often (+-1) in a batch."""
    _square(images)
    n, k = len(images), len(ROTATIONS)
    tiled = torch.arange(k).repeat(n // k + 1)
    labels = tiled[torch.randperm(len(tiled), generator=gen)][:n].to(images.device)
    out = images.clone()
    for r in range(1, k):
        chosen = labels == r
        out[chosen] = torch.rot90(images[chosen], r, dims=(2, 3))
    return out, labels


def concat(sets: list[ImageSet]) -> ImageSet:
    return ImageSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]),
                    [i for s in sets for i in s.ids])


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
    return x.mean(1).tolist(), x.std(1).clamp(min=1e-3).tolist()


def epoch_generator(seed: int, epoch: int, rank: int, stream: int = 0) -> torch.Generator:
    """The randomness of one rank's epoch (``stream`` 0: augmentation; others for other draws): a pure
    function of its arguments (ints hash the same in every process), so a resumed run draws what the
    uninterrupted one drew."""
    return torch.Generator().manual_seed(hash((seed, epoch, rank, stream)) % 2 ** 63)


@dataclass(frozen=True)
class Strong:
    """The strong augmentation of the rows a loader marks (pseudo-labeled images): RandAugment with
    ``ops`` layers at ``magnitude`` before the crop and flip, Cutout of ``cutout`` pixels after
    normalisation (pipeline.strong_augment)."""
    ops: int = 2
    magnitude: int = 9
    cutout: int = 16


class Augment:
    """Training: a random crop of the raw image padded with black (torchvision's
    ``RandomCrop(size, padding=p)``) and a horizontal flip; then, always, per-channel normalisation
    (``ToTensor`` + ``Normalize(mean, std)``). Batched on the batch's device with an explicit generator.
    With ``strong``, the rows of a batch marked ``strong`` are also strongly augmented."""

    def __init__(self, mean, std, kind: str = "crop_flip", padding: int = 4, strong: Optional[Strong] = None):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.kind, self.padding, self.strong = kind, padding, strong

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def draw(self, n: int, gen: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """The random choices of ``n`` images' crop and flip, in the order ``__call__`` makes them: a
        loader draws a whole epoch's at once and moves them to the device in one copy."""
        drawn = {}
        if self.kind in ("crop_flip", "crop") and self.padding:
            drawn["dy"] = torch.randint(0, 2 * self.padding + 1, (n,), generator=gen)
            drawn["dx"] = torch.randint(0, 2 * self.padding + 1, (n,), generator=gen)
        if self.kind in ("crop_flip", "flip"):
            drawn["flip"] = torch.rand(n, generator=gen) < 0.5
        return drawn

    def __call__(self, x: torch.Tensor, gen: Optional[torch.Generator] = None, train: bool = True,
                 strong: Optional[torch.Tensor] = None, drawn: Optional[dict] = None) -> torch.Tensor:
        rows = None
        if train and self.strong and strong is not None and bool(strong.any()):
            rows = strong.nonzero().squeeze(1)
            x = x.clone()
            x[rows] = randaugment(x[rows], self.strong.ops, self.strong.magnitude, gen)
        x = x.float().div_(255)
        if train:
            drawn = self.draw(len(x), gen) if drawn is None else drawn
            if "dy" in drawn:
                x = self._crop(x, drawn["dy"].to(x.device), drawn["dx"].to(x.device))
            if "flip" in drawn:
                x = torch.where(drawn["flip"].to(x.device)[:, None, None, None], x.flip(3), x)
        x = self.normalise(x)
        if rows is not None and self.strong.cutout:
            x[rows] = cutout(x[rows], self.strong.cutout, gen)
        return x

    def _crop(self, x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p))  # zeros of the raw image: a black border
        rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
        return padded[torch.arange(n, device=x.device)[:, None, None, None],
                      torch.arange(c, device=x.device)[None, :, None, None], rows, cols]


def epoch_draws(augment: Augment, sizes: list[int], gen: torch.Generator, device) -> Iterator[Optional[dict]]:
    """Per batch of ``sizes``, its augmentation draws: the very values batch-by-batch drawing gives,
    drawn for the whole epoch up front and copied to the device once (no host-to-device copy, and so
    no wait on the device, per step). With strong augmentation, whose draws interleave, None: the
    batch draws its own."""
    if augment.strong is not None:
        yield from (None for _ in sizes)
        return
    per_batch = [augment.draw(n, gen) for n in sizes]
    if not per_batch or not per_batch[0]:
        yield from ({} for _ in sizes)
        return
    whole = {k: torch.cat([d[k] for d in per_batch]).to(device) for k in per_batch[0]}
    start = 0
    for n in sizes:
        yield {k: v[start:start + n] for k, v in whole.items()}
        start += n


class MemoryLoader:
    """Batches of ``data`` drawn by the recipe's sampler. With ``pseudo_from`` (the union of labeled
    and pseudo-labeled images, the pseudo-labeled rows from that index on) it yields
    (x, y, is_pseudo), and the augmentation treats the pseudo-labeled rows as ``Augment.strong`` says."""

    def __init__(self, data: ImageSet, counts, cfg: TrainConfig, augment: Augment, rank: int = 0, world: int = 1,
                 sampler: Optional[str] = None, pseudo_from: Optional[int] = None):
        self.data, self.counts, self.cfg, self.augment = data, np.asarray(counts), cfg, augment
        self.rank, self.world, self.pseudo_from = rank, world, pseudo_from
        self.sampler = sampler or cfg.sampler.name
        self.labels_np = data.labels.cpu().numpy()
        self.batch = max(1, cfg.batch_size // world)  # per process; the global batch is cfg.batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.data) // self.world / self.batch)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = epoch_indices(self.sampler, self.labels_np, self.counts, self.cfg.seed, epoch, self.rank, self.world,
                            self.cfg.sampler)
        gen = epoch_generator(self.cfg.seed, epoch, self.rank)
        idx = torch.from_numpy(idx).to(self.data.images.device)
        starts = range(0, len(idx), self.batch)
        draws = epoch_draws(self.augment, [len(idx[s:s + self.batch]) for s in starts], gen, idx.device)
        for start, drawn in zip(starts, draws):
            take = idx[start:start + self.batch]
            if self.pseudo_from is None:
                yield self.augment(self.data.images[take], gen, drawn=drawn), self.data.labels[take]
            else:
                pseudo = take >= self.pseudo_from
                yield (self.augment(self.data.images[take], gen, strong=pseudo, drawn=drawn), self.data.labels[take],
                       pseudo)


class MixedLoader:
    """Semi-supervised batches with a fixed share (``train.semi.batches=fixed_share``, a variant of
    ours: Yang & Xu shuffle both sets together, see ``semi_loader``): each holds
    ``batch_size * (1 - unlabeled_share)`` labeled images drawn by the recipe's sampler, then
    ``batch_size * unlabeled_share`` pseudo-labeled ones drawn uniformly; an epoch is one pass of the
    labeled sampler. Yields (x, y, is_pseudo)."""

    def __init__(self, labeled: ImageSet, pseudo: ImageSet, counts, cfg: TrainConfig, augment: Augment,
                 rank: int = 0, world: int = 1):
        self.labeled, self.pseudo, self.counts, self.cfg, self.augment = labeled, pseudo, np.asarray(counts), cfg, augment
        self.rank, self.world = rank, world
        per_rank = max(2, cfg.batch_size // world)
        self.n_pseudo = min(per_rank - 1, max(1, round(per_rank * cfg.semi.unlabeled_share)))
        self.n_labeled = per_rank - self.n_pseudo
        self.labeled_np, self.pseudo_np = labeled.labels.cpu().numpy(), pseudo.labels.cpu().numpy()

    def __len__(self) -> int:
        return math.ceil(len(self.labeled) // self.world / self.n_labeled)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        lab = epoch_indices(self.cfg.sampler.name, self.labeled_np, self.counts, self.cfg.seed, epoch, self.rank, self.world,
                            self.cfg.sampler)
        steps = math.ceil(len(lab) / self.n_labeled)
        pseudo_counts = np.bincount(self.pseudo_np, minlength=len(self.counts))
        order = epoch_indices("random", self.pseudo_np, pseudo_counts, self.cfg.seed + 1, epoch, self.rank, self.world)
        pse = np.resize(order, steps * self.n_pseudo)  # the pool is cycled when it is smaller than needed
        gen = epoch_generator(self.cfg.seed, epoch, self.rank)
        device = self.labeled.images.device
        sizes = [len(lab[s * self.n_labeled:(s + 1) * self.n_labeled]) + self.n_pseudo for s in range(steps)]
        draws = iter(epoch_draws(self.augment, sizes, gen, device))
        for step in range(steps):
            li = torch.from_numpy(lab[step * self.n_labeled:(step + 1) * self.n_labeled]).to(device)
            pi = torch.from_numpy(pse[step * self.n_pseudo:(step + 1) * self.n_pseudo]).to(device)
            x = torch.cat([self.labeled.images[li], self.pseudo.images[pi]])
            y = torch.cat([self.labeled.labels[li], self.pseudo.labels[pi]])
            pseudo = torch.arange(len(y), device=device) >= len(li)
            yield self.augment(x, gen, strong=pseudo, drawn=next(draws)), y, pseudo


def semi_loader(labeled: ImageSet, pseudo: ImageSet, labeled_counts, cfg: TrainConfig, augment: Augment,
                rank: int = 0, world: int = 1):
    """The semi-supervised loader of ``cfg.semi.batches``. ``union`` (Yang & Xu's train_semi.py):
    the labeled and pseudo-labeled images are one training set, drawn by the recipe's sampler with
    the class counts of both, so an epoch is one pass over the union and one loss covers every
    batch. ``fixed_share``: ``MixedLoader``."""
    if len(pseudo) == 0:
        raise DataError("no pseudo-labeled images were selected: nothing to mix in")
    if cfg.semi.batches == "fixed_share":
        return MixedLoader(labeled, pseudo, labeled_counts, cfg, augment, rank, world)
    counts = np.asarray(labeled_counts) + np.bincount(pseudo.labels.cpu().numpy(), minlength=len(labeled_counts))
    return MemoryLoader(concat([labeled, pseudo]), counts, cfg, augment, rank, world, pseudo_from=len(labeled))


def eval_batches(data: ImageSet, augment: Augment, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(data), batch):
        yield augment(data.images[start:start + batch], train=False), data.labels[start:start + batch]


def decoded_bytes(split_dir: str) -> int:
    """Size of the split once decoded to uint8, from the Parquet metadata columns only."""
    t = read_table(split_dir, columns=["height", "width", "channels"])
    return int(sum(h * w * c for h, w, c in zip(*(t.column(k).to_pylist() for k in ("height", "width", "channels")))))


def make_augment(images: torch.Tensor, cfg: TrainConfig, normalization: Optional[dict] = None) -> Augment:
    """The run's augmentation. Its normalisation: ``train.data.norm_mean``/``norm_std`` when set, else the
    one the splits carry (``normalization``: the data set's reference constants, recorded at
    ingest), else measured on ``images`` (the labeled split)."""
    if cfg.data.norm_mean is not None:
        mean, std = cfg.data.norm_mean, cfg.data.norm_std
    elif normalization:
        mean, std = normalization["mean"], normalization["std"]
    else:
        mean, std = channel_stats(images)
    if len(mean) != images.shape[1]:
        raise DataError(f"normalisation of {len(mean)} channels for images of {images.shape[1]}")
    strong = Strong(cfg.semi.randaugment_ops, cfg.semi.randaugment_magnitude, cfg.semi.cutout) \
        if cfg.semi.augment == "randaugment" else None
    return Augment(mean, std, cfg.data.augment, cfg.data.crop_padding, strong)
