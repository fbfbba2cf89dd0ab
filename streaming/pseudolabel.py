"""The pseudo-labelling stream: a Structured Streaming query over the unlabeled Parquet pool that
scores each micro-batch with a base classifier from MLflow (``streaming.score.score``) and writes
the labels, the class balance and the "pseudolabel" MLflow run's step metrics (pipeline.pseudolabel.store).

Restarting with the same output and checkpoint continues where the last committed micro-batch
ended; the output records the model and the policy, and a restart with others is refused."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Iterator, Optional

import pyarrow.compute as pc

from pipeline import fs, schema
from pipeline.config import Config
from pipeline.provenance import git_commit, stamp
from pipeline.pseudolabel import state as stream_state
from pipeline.pseudolabel import store
from pipeline.pseudolabel.balance import balance_metrics, imbalance_ratio, overall_precision, prior_errors
from pipeline.pseudolabel.books import Books, fault
from pipeline.pseudolabel.policies import Policy, from_config
from pipeline.records import Manifest, Stream
from pipeline.tracking import Tracker
from streaming.checkpoint import batch_files, claim_checkpoint, unreadable_files
from streaming.checks import held_out_confusion, input_identity, load_truth, precision_check, truth_path, val_path
from streaming.score import ERROR, ScoringModel, StreamError, resolve, score


def base_run(model: ScoringModel) -> dict:
    """The base model's run: tags, experiment, and the manifest of the splits it was trained on."""
    import mlflow

    run = mlflow.tracking.MlflowClient(model.tracking_uri).get_run(model.run_id)
    if run.data.tags.get("stage") == "pretrain":
        raise StreamError(f"run {model.run_id} is a rotation pre-training (it predicts rotations, not classes); "
                          f"pseudo-label with a classifier")
    uri = f"runs:/{model.run_id}/{Manifest.FILE}"
    try:
        logged = mlflow.artifacts.load_dict(uri)
    except Exception as e:
        raise StreamError(f"run {model.run_id} has no {Manifest.FILE} artifact (not a jobs/train.py run?): {e}") from None
    manifest = Manifest.from_dict(logged, uri)
    experiment = mlflow.tracking.MlflowClient(model.tracking_uri).get_experiment(run.info.experiment_id).name
    return {"tags": run.data.tags, "name": run.info.run_name, "experiment": experiment,
            "experiment_id": run.info.experiment_id, "manifest": manifest}


def _stream_info(cfg: Config, model: ScoringModel, policy: Policy, base: dict, truth: Optional[str],
                 checkpoint: str) -> Stream:
    p, manifest = cfg.pseudolabel, base["manifest"]
    return Stream(model_uri=model.uri, model_run_id=model.run_id, model_ref=p.model, model_version=model.version,
                  tracking_uri=model.tracking_uri, policy=policy.params(), input=fs.normalize(p.input),
                  input_ids_sha256=input_identity(p.input), truth=truth, checkpoint=checkpoint,
                  trigger={"trigger": p.trigger, "max_files_per_trigger": p.max_files_per_trigger},
                  class_names=manifest.class_names, labeled_counts=manifest.labeled_counts,
                  splits_manifest_sha256=manifest.manifest_sha256,
                  round=int(base["tags"].get("round", 0)),  # the self-training round of the scoring model
                  base_run={"name": base["name"], "experiment": base["experiment"],
                            "experiment_id": base["experiment_id"],
                            **{k: base["tags"].get(k) for k in ("dataset", "imbalance_ratio", "method", "seed", "stage")}})


def _check_same_stream(old: Stream, new: Stream, out: str) -> None:
    """A restart continues the same stream or is refused: another model (run id), policy, input (or
    input contents), checkpoint or trigger would mix two streams in one output."""
    for key in Stream.RESTART_KEYS:
        if key == "state" and old.state is None:  # written before the state existed: it is rebuilt from the labels
            continue
        if getattr(old, key) != getattr(new, key):
            raise StreamError(f"{out} holds pseudo-labels of another stream ({key}: {getattr(old, key)!r}, now "
                              f"{getattr(new, key)!r}); use a new --out (and --checkpoint), or delete the old output")
    if store.committed_batches(out) and not fs.exists(fs.join(new.checkpoint, "offsets")):
        raise StreamError(f"{out} holds {len(store.committed_batches(out))} micro-batches but their checkpoint "
                          f"{new.checkpoint} is gone: a new query would score from batch 0 again beside them; "
                          f"use a new --out, or delete the old output")


def run_pseudolabel(spark, cfg: Config) -> dict:
    p = cfg.pseudolabel
    from_config(p)  # an unknown policy fails before any work
    model = resolve(p.model, p.device, p.batch_size, p.threads_per_task, p.precision)
    base = base_run(model)
    if not fs.exists(p.input):
        raise StreamError(f"pseudolabel.input: {fs.normalize(p.input)} does not exist")
    out = fs.normalize(p.out)
    checkpoint = fs.normalize(p.checkpoint) if p.checkpoint else fs.join(out, "_checkpoint")
    previous = Stream.read(out) if fs.exists(fs.join(out, Stream.FILE)) else None
    info, policy = _plan(spark, cfg, model, base, previous, checkpoint)
    if previous:
        _check_same_stream(previous, info, out)
    claim_checkpoint(checkpoint, out)
    tracker = _open_run(p, info, policy, base, model, previous, out)
    writer = _batch_writer(model, out, checkpoint, info, policy, tracker,
                           per_class=len(info.class_names) <= p.class_metrics_max)
    _run_query(spark, p, writer, checkpoint, tracker)
    return summary_of(out, info)


def _plan(spark, cfg: Config, model: ScoringModel, base: dict, previous: Optional[Stream],
          checkpoint: str) -> tuple[Stream, Policy]:
    """The stream's record (stream.json) and its selection policy; a restart keeps the measurements
    it started with (the BBSE matrix, the bf16 check: a re-score could differ in the last bit)."""
    p = cfg.pseudolabel
    held_out = val_path(p)
    if p.adjust == "bbse" and held_out is None:
        raise StreamError("pseudolabel.adjust=bbse needs a held-out labeled split: make the splits with "
                          "longtail.val_per_class > 0, or give pseudolabel.val")
    same_model = bool(previous) and previous.model_run_id == model.run_id
    bbse = None
    if held_out is not None:
        same = same_model and (previous.bbse or {}).get("val") == held_out
        bbse = previous.bbse if same else held_out_confusion(spark, model, held_out, len(base["manifest"].class_names))
    generation = int(base["tags"].get("round", 0)) + 1  # the base model's labels are the first generation
    policy = from_config(p, base["manifest"].labeled_counts, bbse["confusion"] if bbse else (),
                         generation, max(cfg.train.semi.rounds, generation))
    info = _stream_info(cfg, model, policy, base, truth_path(p), checkpoint)
    info.bbse, info.scoring_precision = bbse, p.precision
    info.state = {"version": stream_state.VERSION, "sample_values": p.sample_values, "seed": p.sample_seed,
                  "bins": stream_state.BINS}
    if p.precision != "fp32":
        kept = same_model and previous.scoring_precision == p.precision
        info.scoring_check = previous.scoring_check if kept else precision_check(spark, model, p.input, p.check_images)
    return info, policy


def _open_run(p, info: Stream, policy: Policy, base: dict, model: ScoringModel, previous: Optional[Stream], out: str):
    """The stream's "pseudolabel" MLflow run, a child of the base model's: opened, or reopened on a restart."""

    tags = {**{k: v for k, v in info.base_run.items() if k in ("dataset", "imbalance_ratio", "method", "seed")
               and v is not None},
            "stage": "pseudolabel", "parent_run_id": model.run_id, "policy": policy.name,
            "model": base["tags"].get("model", ""), **({"model_version": model.version} if model.version else {})}
    tracker = Tracker(p.experiment or base["experiment"], f"{base['name']}-pl-{policy.name}", tags,
                      run_id=previous.run_id if previous else None)
    made = {k: getattr(previous, k) for k in ("created_at", "git_commit", "spark_version")} if previous else stamp()
    info.run_id = tracker.run_id  # and when, by which commit and Spark the stream first started
    info.created_at, info.git_commit, info.spark_version = made["created_at"], made["git_commit"], made["spark_version"]
    info.write(out, atomic=True)
    if not previous:
        policy_keys = ("select", "tau", "alpha", "top_k", "crest_alpha", "adjust", "adjust_tau", "refine", "darp_alpha",
                       "align_labels", "align_final_t")
        tracker.log_params({"pseudolabel": {k: v for k, v in vars(p).items() if k not in policy_keys},
                            "policy": {k: v for k, v in policy.params().items() if k != "confusion"},
                            "git_commit": git_commit(), "base_run_id": model.run_id})
        tracker.log_dict(info.to_dict(), Stream.FILE)
        check = info.scoring_check or {}
        tracker.log_metrics({f"scoring_{k}": check[k] for k in ("agreement", "top1", "fp32_top1") if k in check})
    return tracker


def _batch_writer(model: ScoringModel, out: str, checkpoint: str, info: Stream, policy: Policy, tracker,
                  per_class: bool = True):
    """The query's foreachBatch function: score the micro-batch, write its labels and rejects, commit
    the books (the stream's state and the class balance, from this batch alone: pipeline.pseudolabel.books)
    and log the balance as the run's step metrics (once per batch id)."""
    settings = info.state  # this run's (a restart of an output that had none adopts them)
    books = Books(out, info.class_names, info.labeled_counts, policy, info.bbse["confusion"] if info.bbse else (),
                  load_truth(info.truth), settings["sample_values"], settings["seed"])
    logged = {"step": tracker.last_step("pl_rows_total")}  # the run's last logged micro-batch (read once)

    def process(batch_df, batch_id: int) -> None:
        started = time.time()
        store.begin_labels(out, batch_id)
        scored = score(batch_df, model).toArrow()  # the one Spark job of the micro-batch
        scored_at = time.time()
        failed = pc.is_valid(scored.column(ERROR))
        good = scored.filter(pc.invert(failed))
        store.write_labels(good, out, batch_id)
        fault("after-labels", batch_id)
        rejected = [{"id": i, "source": None, "reason": "not_scorable", "detail": why}
                    for i, why in zip(scored.column("id").filter(failed).to_pylist(),
                                      scored.column(ERROR).filter(failed).to_pylist())]
        read = scored.num_rows
        files = batch_files(checkpoint, batch_id)
        unreadable, expected = unreadable_files(files)
        rejected += unreadable
        if files and read < expected:  # a file whose footer reads but whose data does not: Spark skipped the rest
            rejected.append({"id": None, "source": None, "reason": "unreadable_rows",
                             "detail": f"{expected - read} of the {expected} rows the batch's readable files "
                                       f"declare could not be read: {', '.join(map(fs.normalize, files))}"})
        store.write_rejected(out, batch_id, rejected)
        books_at = time.time()
        table, state = books.commit(batch_id, good, started)
        books_s = time.time() - books_at
        if logged["step"] is None or batch_id > logged["step"]:  # a replayed batch is not logged twice
            tracker.log_metrics({**balance_metrics(table, per_class), "pl_wall_s": time.time() - started}, step=batch_id)
            logged["step"] = batch_id
        if rejected:
            print(f"batch {batch_id}: {len(rejected)} inputs rejected (OUT/rejected), e.g. {rejected[0]['detail']}",
                  flush=True)
        wall = time.time() - started
        print(f"batch {batch_id}: {good.num_rows} images in {wall:.2f} s ({good.num_rows / max(wall, 1e-9):.0f} img/s; "
              f"scoring {scored_at - started:.2f} s, state and balance {books_s:.2f} s), {state.rows} scored so far",
              flush=True)

    return process


def _run_query(spark, p, process, checkpoint: str, tracker) -> None:
    """Run the query until the input is used up (available-now), the timeout, or SIGTERM/SIGINT;
    the run ends FINISHED, FAILED or KILLED."""
    # A corrupt file is skipped by the reader (else it would fail the same micro-batch on every
    # restart) and recorded by process() with its reason: nothing is dropped silently.
    reader = (spark.readStream.schema(schema.spark_schema(schema.IMAGE_COLUMNS))
              .option("maxFilesPerTrigger", p.max_files_per_trigger).option("ignoreCorruptFiles", "true")
              .parquet(fs.spark_path(p.input)))
    writer = (reader.writeStream.foreachBatch(process).option("checkpointLocation", fs.spark_path(checkpoint))
              .queryName(f"pseudolabel-{tracker.run_id[:8]}"))
    if p.trigger == "available-now":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{p.interval_s} seconds")
    query = writer.start()
    status = "FAILED"
    deadline = time.time() + p.timeout_s if p.trigger == "continuous" and p.timeout_s else None
    # spark-submit's JVM gets the same SIGTERM and may take this process down with it: the run is
    # marked KILLED from the handler itself, before anything else can go wrong
    with _stop_on_signals(on_signal=lambda: tracker.end("KILLED")) as stopped:
        try:
            # Wait in short slices so that a signal is acted on here, in the main thread: stopping
            # the query from the signal handler would re-enter the Py4J call that is waiting.
            while query.isActive and not stopped.is_set() and (deadline is None or time.time() < deadline):
                query.awaitTermination(1)
            query.stop()  # a micro-batch it interrupts is replayed on restart (idempotent per batch id)
            if query.exception() is not None:
                raise StreamError(f"the pseudo-label query failed: {query.exception()}")
            status = "FINISHED"
        finally:
            tracker.end("KILLED" if stopped.is_set() else status)


@contextlib.contextmanager
def _stop_on_signals(on_signal) -> Iterator[threading.Event]:
    """While the query runs, SIGTERM/SIGINT call ``on_signal`` and set the returned event (the
    caller stops the query) instead of killing the driver mid-write; the previous handlers come
    back afterwards."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stopped
        return

    def handler(signum, frame):
        if not stopped.is_set():
            stopped.set()
            on_signal()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopped
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def summary_of(out: str, info: Stream) -> dict:
    last = store.latest_balance(out)
    result = {"run_id": info.run_id, "out": out, "model_run_id": info.model_run_id,
              "policy": info.policy["name"], "scoring_precision": info.scoring_precision,
              **({"scoring_check": info.scoring_check} if info.scoring_check else {})}
    if last is None:
        return {**result, "batches": 0, "scored": 0}
    rows = last.to_pylist()
    selected = [r["selected_count"] for r in rows]
    result.update(batches=len(store.committed_batches(out)), scored=rows[0]["cumulative_rows"],
                  rejected=store.read_rejected(out).num_rows,
                  selected=sum(selected), selected_imbalance_ratio=imbalance_ratio(selected))
    precision = overall_precision(rows)
    if precision is not None:
        result["precision"] = precision
    for key in ("prior_em", "prior_bbse"):
        if rows[0].get(key) is not None:
            result[key] = [round(r[key], 4) for r in rows]
    result.update({k: v for k, v in prior_errors(rows).items() if k.startswith("pl_prior_l1")})
    return result


def summary(result: dict) -> str:
    lines = [f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in result.items()]
    return "\n".join(lines)
