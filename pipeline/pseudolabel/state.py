"""The stream's running state: what the class balance needs, updated from each micro-batch alone.

A micro-batch's bookkeeping must cost the same after ten million scored images as after ten
thousand, so the stream never re-reads its labels. It keeps instead, per class:

* exact counters: predictions, their confidence sum, predictions at or above ``tau``, the hidden
  true counts and the right predictions (when the pool's truth is known), and the sum of every
  probability vector (BBSE's statistic: the pool's mean prediction);
* a confidence histogram of each predicted class, of all and of the right predictions (``BINS``
  bins on [0, 1]);
* a seeded uniform sample of rows with their probability vectors: the rows of the smallest
  ``blake2b(seed, id)``, at most ``sample_values // classes`` rows. Which rows it holds depends on
  their ids alone, not on the order or the grouping of the micro-batches.

While the sample holds every row scored so far (a pool of up to ``sample_values / classes`` images:
200,000 at 10 classes with the default), the balance is today's full recomputation, bit for bit:
``balance_table`` over those rows. Beyond it the per-class counts, confidences, true counts and
BBSE's prior stay exact, and what needs rows is estimated, with these errors (tested in
tests/test_stream_state.py against the full recomputation):

* the rows a confidence policy keeps (``all``, ``threshold``: exact; ``top_k_per_class``,
  ``crest``: exact counts, their right ones from the histogram; ``class_threshold``: from the
  histogram): off by at most the rows of the one bin a class's threshold falls in, linearly
  interpolated there;
* EM's prior, a prior-corrected or aligned policy's counts and precision: from the sample, scaled
  by rows / sample rows: a binomial error of about sqrt(p (1 - p) / sample rows) in each share.
  EM runs at most ``EM_STEPS`` iterations a micro-batch, from the prior the batch before reached
  (``em_prior``), so it converges over the micro-batches at a bounded cost each.

The state after micro-batch N is kept as OUT/state/batch-N.npz (``save``; numpy arrays only, read
with ``allow_pickle=False``), written before the balance of N. A replay of N starts from the state
of the last batch before N, so a micro-batch replayed after a crash is never counted twice, and a
restart continues with the state an unbroken run would have."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import zipfile
from typing import Optional, Sequence

import numpy as np

from pipeline import fs
from pipeline.pseudolabel.policies import Policy, class_thresholds
from pipeline.pseudolabel.prior import crest_rates

BINS = 64  # confidence histogram bins per class
EM_STEPS = 25  # EM iterations a micro-batch past the sample (each: two passes over the sample)
VERSION = 1
FOLDER = "state"
_FILE = re.compile(r"^batch-(\d+)\.npz$")


@dataclasses.dataclass
class StreamState:
    classes: int
    tau: float  # the policy's threshold: ``above`` counts the predictions at or above it
    sample_rows: int  # the sample's capacity
    seed: int
    has_truth: bool
    batch_id: int = -1  # the last micro-batch applied
    rows: int = 0
    count: np.ndarray = None  # predictions per class
    confidence_sum: np.ndarray = None
    above: np.ndarray = None  # predictions per class with confidence >= tau
    above_right: np.ndarray = None
    true_count: np.ndarray = None  # hidden truth: rows of each class
    right: np.ndarray = None  # hidden truth: right predictions per predicted class
    probs_sum: np.ndarray = None  # the sum of every probability vector (float64)
    hist: np.ndarray = None  # classes x BINS: predictions per class and confidence bin
    hist_right: np.ndarray = None
    em_prior: np.ndarray = None  # EM's prior from the sample, carried from batch to batch (zeros: none yet)
    # the sample, in scoring order (batch, then id)
    s_key: np.ndarray = None  # uint64 priority: blake2b of (seed, id)
    s_batch: np.ndarray = None
    s_id: np.ndarray = None  # the ids, UTF-8 (fixed-width bytes: their order is Arrow's string order)
    s_predicted: np.ndarray = None
    s_confidence: np.ndarray = None
    s_truth: np.ndarray = None  # -1: unknown
    s_probs: np.ndarray = None  # sample rows x classes, float32

    @classmethod
    def empty(cls, classes: int, tau: float, sample_values: int, seed: int, has_truth: bool) -> "StreamState":
        c = classes
        z = lambda *shape, dtype=np.int64: np.zeros(shape, dtype=dtype)  # noqa: E731
        return cls(c, float(tau), max(1, int(sample_values) // c), int(seed), bool(has_truth),
                   count=z(c), confidence_sum=z(c, dtype=np.float64), above=z(c), above_right=z(c),
                   true_count=z(c), right=z(c), probs_sum=z(c, dtype=np.float64), hist=z(c, BINS),
                   hist_right=z(c, BINS), em_prior=z(c, dtype=np.float64), s_key=z(0, dtype=np.uint64), s_batch=z(0),
                   s_id=np.zeros(0, "S1"), s_predicted=z(0, dtype=np.int32), s_confidence=z(0, dtype=np.float32),
                   s_truth=z(0, dtype=np.int32),
                   s_probs=np.zeros((0, c), np.float32))

    @property
    def complete(self) -> bool:
        """The sample holds every row scored so far: the balance is exact."""
        return len(self.s_key) == self.rows

    def update(self, batch_id: int, ids: Sequence[str], predicted: np.ndarray, confidence: np.ndarray,
               probs: np.ndarray, truth: Optional[np.ndarray]) -> "StreamState":
        """The state after micro-batch ``batch_id`` (its rows in id order), a new object: ``self`` is
        the state after the batches before it. Costs O(batch + sample), whatever came before."""
        if batch_id <= self.batch_id:
            raise ValueError(f"micro-batch {batch_id} is already in this state (it ends at batch {self.batch_id}): "
                             f"a replay starts from the state before it")
        c = self.classes
        predicted = np.asarray(predicted, dtype=np.int64)
        confidence = np.asarray(confidence, dtype=np.float32)
        probs = np.asarray(probs, dtype=np.float32).reshape(len(predicted), c)
        truth = np.full(len(predicted), -1, np.int64) if truth is None else np.asarray(truth, dtype=np.int64)
        new = dataclasses.replace(self, batch_id=batch_id, rows=self.rows + len(predicted))
        count = lambda rows, weights=None: np.bincount(predicted[rows], weights=None if weights is None  # noqa: E731
                                                       else weights[rows], minlength=c)
        everything = np.ones(len(predicted), bool)
        new.count = self.count + count(everything)
        new.confidence_sum = self.confidence_sum + count(everything, confidence.astype(np.float64))
        high = confidence.astype(np.float64) >= self.tau  # as the policy compares (float64)
        new.above = self.above + count(high)
        known = truth >= 0
        hit = known & (predicted == truth)
        new.above_right = self.above_right + count(high & hit)
        new.true_count = self.true_count + np.bincount(truth[known], minlength=c)
        new.right = self.right + count(hit)
        new.probs_sum = self.probs_sum + probs.sum(axis=0, dtype=np.float64)
        bins = bin_of(confidence)
        new.hist, new.hist_right = self.hist.copy(), self.hist_right.copy()
        np.add.at(new.hist, (predicted, bins), 1)
        np.add.at(new.hist_right, (predicted[hit], bins[hit]), 1)
        keys = priorities(ids, self.seed)
        encoded = [i.encode() for i in ids]
        width = max(self.s_id.dtype.itemsize, max((len(i) for i in encoded), default=1), 1)
        merged = {
            "s_key": np.concatenate([self.s_key, keys]),
            "s_batch": np.concatenate([self.s_batch, np.full(len(ids), batch_id, np.int64)]),
            "s_id": np.concatenate([self.s_id.astype(f"S{width}"), np.asarray(encoded, dtype=f"S{width}")]),
            "s_predicted": np.concatenate([self.s_predicted, predicted.astype(np.int32)]),
            "s_confidence": np.concatenate([self.s_confidence, confidence]),
            "s_truth": np.concatenate([self.s_truth, truth.astype(np.int32)]),
            "s_probs": np.concatenate([self.s_probs, probs]),
        }
        kept = np.arange(len(merged["s_key"]))
        if len(kept) > self.sample_rows:  # the smallest keys; ties (equal hashes) by id
            kept = np.lexsort((merged["s_id"], merged["s_key"]))[: self.sample_rows]
            kept = kept[np.lexsort((merged["s_id"][kept], merged["s_batch"][kept]))]  # back to scoring order
        for key, values in merged.items():
            setattr(new, key, values[kept])
        return new

    # --- persistence: numpy arrays only, no pickle ----------------------------------------------

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        np.savez(buffer, version=np.int64(VERSION), **{k: np.asarray(v) for k, v in fields.items()})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "StreamState":
        scalars = {"classes": int, "tau": float, "sample_rows": int, "seed": int, "has_truth": bool,
                   "batch_id": int, "rows": int}
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                if int(z["version"]) != VERSION:
                    raise ValueError(f"state version {int(z['version'])}, this code reads {VERSION}")
                values = {f.name: z[f.name] for f in dataclasses.fields(cls)}
            state = cls(**{k: scalars[k](v) if k in scalars else v for k, v in values.items()})
            c, n = state.classes, len(state.s_key)
            shapes = {"count": (c,), "hist": (c, BINS), "hist_right": (c, BINS), "probs_sum": (c,), "s_probs": (n, c),
                      "s_id": (n,), "s_truth": (n,)}
            for key, shape in shapes.items():
                if getattr(state, key).shape != shape:
                    raise ValueError(f"{key} has shape {getattr(state, key).shape}, expected {shape}")
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{where}: unreadable stream state: {e}") from None
        return state


def bin_of(confidence: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(confidence, dtype=np.float64) * BINS).astype(np.int64), 0, BINS - 1)


def priorities(ids: Sequence[str], seed: int) -> np.ndarray:
    """Each id's place in the sample's order: a keyed hash, uniform and independent of the batches."""
    key = int(seed).to_bytes(8, "little", signed=True)
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=key).digest(), "little")
                     for i in ids], dtype=np.uint64)


# --- the state's files: OUT/state/batch-N.npz, the last two kept ---------------------------------

def path(out: str, batch_id: int) -> str:
    return fs.join(out, FOLDER, f"batch-{batch_id:08d}.npz")


def saved_batches(out: str) -> list[int]:
    root = fs.join(out, FOLDER)
    if not fs.exists(root):
        return []
    return sorted(int(m.group(1)) for rel, _ in fs.list_files(root) if (m := _FILE.match(rel)))


def save(out: str, state: StreamState) -> None:
    """Write the state of ``state.batch_id`` whole (aside, then renamed), then drop those older than
    the batch before it: a replay of this batch needs that one."""
    target = path(out, state.batch_id)
    fsys, target_path = fs.filesystem(target)
    fsys.create_dir(fs.filesystem(fs.join(out, FOLDER))[1], recursive=True)
    tmp = target_path + ".tmp"
    with fsys.open_output_stream(tmp) as f:
        f.write(state.to_bytes())
    fsys.move(tmp, target_path)
    for old in saved_batches(out):
        if old < state.batch_id - 1:
            fsys.delete_file(fs.filesystem(path(out, old))[1])


def load_before(out: str, batch_id: int) -> Optional[StreamState]:
    """The state of the last micro-batch before ``batch_id`` that was saved, or None."""
    earlier = [b for b in saved_batches(out) if b < batch_id]
    if not earlier:
        return None
    return load(out, earlier[-1])


def load(out: str, batch_id: int) -> StreamState:
    state = StreamState.from_bytes(fs.read_bytes(path(out, batch_id)), path(out, batch_id))
    if state.batch_id != batch_id:
        raise ValueError(f"{path(out, batch_id)}: holds the state of micro-batch {state.batch_id}, not {batch_id}")
    return state


def load_histogram(out: str) -> Optional[np.ndarray]:
    """The confidence histogram of every prediction so far (BINS counts), from the newest state
    alone (an npz member is read by itself): what the dashboard draws."""
    batches = saved_batches(out)
    if not batches:
        return None
    where = path(out, batches[-1])
    fsys, p = fs.filesystem(where)
    try:
        with fsys.open_input_file(p) as f, np.load(f, allow_pickle=False) as z:
            if int(z["version"]) != VERSION:
                raise ValueError(f"state version {int(z['version'])}, this code reads {VERSION}")
            return z["hist"].sum(axis=0)
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{where}: unreadable stream state: {e}") from None


# --- the balance the state gives when the sample no longer holds every row -----------------------

def above(hist: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Per class, the rows with confidence >= its threshold, from the histogram: the bins above it
    whole, the bin it falls in by linear interpolation."""
    edges = np.arange(BINS + 1) / BINS
    lo, hi = edges[:-1], edges[1:]
    t = np.asarray(threshold, dtype=np.float64)[:, None]
    share = np.clip((hi[None, :] - t) / (hi - lo)[None, :], 0.0, 1.0)
    return (hist * share).sum(axis=1)


def top(hist: np.ndarray, hist_right: np.ndarray, take: np.ndarray) -> np.ndarray:
    """Per class, the right predictions among its ``take`` most confident, from the histograms: the
    top bins whole, the bin the count ends in by its share of right ones."""
    out = np.zeros(len(hist))
    for c in range(len(hist)):
        left = float(take[c])
        for b in range(BINS - 1, -1, -1):
            if left <= 0:
                break
            n = hist[c, b]
            if n == 0:
                continue
            used = min(left, n)
            out[c] += hist_right[c, b] * used / n
            left -= used
    return out


def kept_counts(state: StreamState, policy: Policy) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(kept per class, right kept per class or None without the truth) of a policy on the raw
    predictions, from the counters and histograms."""
    name, count = policy.name, state.count
    if name == "all":
        kept, right = count.astype(np.float64), state.right.astype(np.float64)
    elif name == "threshold":
        kept, right = state.above.astype(np.float64), state.above_right.astype(np.float64)
    elif name == "class_threshold":
        t = class_thresholds(count, policy.tau, policy.alpha)
        kept, right = above(state.hist, t), above(state.hist_right, t)
    elif name == "top_k_per_class":
        kept = np.minimum(count, policy.top_k).astype(np.float64)
        right = top(state.hist, state.hist_right, kept)
    elif name == "crest":
        kept = np.floor(count * crest_rates(policy.labeled_counts, policy.crest_alpha))
        right = top(state.hist, state.hist_right, kept)
    else:
        raise ValueError(f"no streaming form of the policy {name!r}")
    return kept, (right if state.has_truth else None)
