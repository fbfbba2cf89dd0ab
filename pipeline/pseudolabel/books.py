"""The stream's books: what a micro-batch commits once its labels are written, in bounded work.

``Books.commit`` brings the stream's state (pipeline.pseudolabel.state) forward by the micro-batch's
rows alone, saves it, and writes the class balance it gives. The stream (streaming/pseudolabel.py)
calls it for every micro-batch; tests/test_stream_state.py drives it with synthetic scored rows and
``make bench-scale`` through the real job."""
from __future__ import annotations

import os
import signal
import time
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from pipeline.pseudolabel import state as stream_state
from pipeline.pseudolabel import store
from pipeline.pseudolabel.balance import state_balance, with_latency
from pipeline.pseudolabel.policies import Policy
from pipeline.pseudolabel.prior import em_prior
from pipeline.pseudolabel.state import StreamState

COLUMNS = ["id", "predicted", "confidence", "probs"]  # what the books read of a micro-batch's labels


class Books:
    def __init__(self, out: str, class_names: Sequence[str], labeled_counts: Sequence[int], policy: Policy,
                 confusion=(), truth: Optional[dict] = None, sample_values: int = 2_000_000, seed: int = 0):
        self.out, self.names, self.labeled, self.policy = out, list(class_names), list(labeled_counts), policy
        self.confusion, self.truth = confusion, truth
        self.sample_values, self.seed = sample_values, seed
        self.last: Optional[StreamState] = None  # the state this process committed last

    def empty(self) -> StreamState:
        return StreamState.empty(len(self.names), self.policy.tau, self.sample_values, self.seed,
                                 self.truth is not None)

    def state_before(self, batch_id: int) -> StreamState:
        """The state after every committed micro-batch before ``batch_id``: the one this process
        committed last, or the saved one (a replay of ``batch_id`` starts from the batch before it),
        brought up to date from the labels where it lags (an output written before the state
        existed: a one-off cost)."""
        if self.last is not None and self.last.batch_id == batch_id - 1:
            return self.last
        held = stream_state.load_before(self.out, batch_id) or self.empty()
        committed = store.committed_batches(self.out)  # listed once: one batch's labels read at a time
        lagging = [b for b in committed if held.batch_id < b < batch_id]
        if lagging:
            print(f"state: brought up to batch {batch_id - 1} from the labels of batches {lagging[0]}..{lagging[-1]}",
                  flush=True)
        for b in lagging:
            held = held.update(b, *self.arrays(store.read_labels(self.out, COLUMNS, only=b, listing=committed)))
        if lagging:  # EM starts afresh from the labeled prior (an unbroken run would have warmed it up)
            held.em_prior = np.zeros(len(self.names))
        return held

    def arrays(self, labels: pa.Table) -> tuple:
        """(ids, predicted, confidence, probs, hidden labels or None) of one micro-batch's rows, in id order."""
        labels = labels.sort_by("id")
        ids = labels.column("id").to_pylist()
        hidden = None if self.truth is None else np.array([self.truth.get(i, -1) for i in ids], dtype=np.int64)
        return (ids, labels.column("predicted").to_numpy().astype(np.int64), labels.column("confidence").to_numpy(),
                store.probs_matrix(labels), hidden)

    def commit(self, batch_id: int, labels: pa.Table, started: float) -> tuple[pa.Table, StreamState]:
        """After micro-batch ``batch_id``'s labels are written: its state and the balance it gives;
        the state saved before the balance is written (a replay of the batch starts from the one
        before it and counts nothing twice). ``started``: when the micro-batch began (its latency
        runs through the balance's computation)."""
        ids, predicted, confidence, probs, hidden = self.arrays(labels)
        before = self.state_before(batch_id)
        now = before.update(batch_id, ids, predicted, confidence, probs, hidden)
        em = None
        if not now.complete:  # EM on the sample, a bounded number of steps from where the last batch left it
            em = em_prior(now.s_probs, np.asarray(self.labeled, dtype=np.float64), max_iter=stream_state.EM_STEPS,
                          start=before.em_prior if before.em_prior.sum() > 0 else None)
        table = state_balance(batch_id, now, predicted, confidence, self.names, self.labeled, self.policy, 0.0,
                              self.confusion, em)
        table = with_latency(table, time.time() - started)  # the balance's own computation included
        now.em_prior = np.asarray(table.column("prior_em").to_pylist(), dtype=np.float64)  # where the next one starts
        stream_state.save(self.out, now)
        self.last = now
        fault("after-state", batch_id)
        store.write_balance(self.out, batch_id, table)
        return table, now


def fault(point: str, batch_id: int) -> None:
    """The crash tests' kill points: ``LONGTAIL_STREAM_FAULT=<point>:<batch id>`` SIGKILLs the driver
    there (after-labels: the batch's labels are committed, its state is not; after-state: its state
    is saved, its balance is not)."""
    if os.environ.get("LONGTAIL_STREAM_FAULT") == f"{point}:{batch_id}":
        print(f"fault: killed {point} of batch {batch_id}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
