"""Ingest: a registered data set -> ``DIR/images`` (Parquet, schema.IMAGE_COLUMNS),
``DIR/_rejected`` (Parquet, schema.REJECT_COLUMNS) and ``DIR/ingest.json`` (counts, provenance).

Every input record becomes exactly one row of one of the two tables; the counts are read back from
disk and checked (input records == written + rejected) before the output replaces ``DIR``."""
from __future__ import annotations

import json
import time
from collections import Counter
from functools import partial
from typing import Iterator, Optional

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline import fs, schema
from pipeline.config import Config, to_dict
from pipeline.errors import PipelineError
from pipeline.output import staged
from pipeline.provenance import stamp
from pipeline.records import Ingest
from pipeline.sources import Plan, TaskContext, get_source, rejected_row
from pipeline.tables import read_table

IMAGES, REJECTED = schema.INGESTED_IMAGES, schema.INGEST_REJECTED
ROWS_PER_BATCH = 256  # Arrow batch size of task output: bounded memory for large images


class IngestError(PipelineError, RuntimeError):
    pass


def _unit_name(unit: dict) -> str:
    for key in ("member", "file", "source"):
        if key in unit:
            return str(unit[key])
    return json.dumps(unit)[:200]


def _read_units(dataset: str, ctx: TaskContext, units, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Task side: expand each unit (by its index in the broadcast ``units``) into rows; a unit that
    fails as a whole becomes one rejected row."""
    source, out_schema = get_source(dataset), schema.arrow_schema(schema.INGEST_TASK_COLUMNS)
    for batch in batches:
        for index in batch.column("id").to_pylist():
            unit = json.loads(units.value[index])
            rows: list[dict] = []
            try:
                for row in source.read(unit, ctx):
                    rows.append(row)
                    if len(rows) == ROWS_PER_BATCH:
                        yield pa.RecordBatch.from_pylist(rows, schema=out_schema)
                        rows = []
            except Exception as e:  # an unreadable archive, batch or .mat file: kept as a rejected record
                rows.append(rejected_row(_unit_name(unit), unit.get("split"), "unreadable_source",
                                         f"{type(e).__name__}: {e}"))
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=out_schema)


def read_records(spark: SparkSession, dataset: str, plan: Plan, ctx: TaskContext, units) -> DataFrame:
    """One row per input record (schema.INGEST_TASK_COLUMNS); rejected rows have a reason. ``units``:
    the plan's units broadcast as JSON (``broadcast_units``)."""
    # One unit per task, exactly: a range of n ids in n partitions holds one id in each (a round-robin
    # repartition of a small DataFrame does not: it put both units of a 2-unit plan into one task).
    return spark.range(0, len(plan.units), numPartitions=max(1, len(plan.units))).mapInArrow(
        partial(_read_units, dataset, ctx, units), schema.spark_schema(schema.INGEST_TASK_COLUMNS))


def broadcast_units(spark: SparkSession, plan: Plan):
    """The plan's units for the tasks: fetched once per executor, not shipped inside every task."""
    return spark.sparkContext.broadcast([json.dumps(u) for u in plan.units])


def accepted(records: DataFrame, class_names: list[str]) -> DataFrame:
    rows = records.filter(F.col("reason").isNull()).select(*schema.names(schema.IMAGE_COLUMNS))
    return rows.withMetadata("label", {schema.CLASS_NAMES_KEY: list(class_names)})


def rejected(records: DataFrame) -> DataFrame:
    rows = records.filter(F.col("reason").isNotNull()).withColumnRenamed("image", "payload")
    return rows.select(*schema.names(schema.REJECT_COLUMNS))


def read_rejected(spark: SparkSession, data_dir: str) -> DataFrame:
    """DIR/_rejected as a DataFrame. Spark skips a path named ``_...`` (it takes it for metadata), so
    the part files are passed one by one; the writer always leaves at least one, with the schema."""
    folder = fs.join(data_dir, REJECTED)
    parts = [fs.spark_path(fs.join(folder, p)) for p, _ in fs.list_files(folder) if p.endswith(".parquet")]
    return spark.read.schema(schema.spark_schema(schema.REJECT_COLUMNS)).parquet(*parts)


def _split_counts(groups: list, class_names: list[str]) -> dict:
    splits: dict[str, dict] = {}
    for split, label, n in sorted(groups, key=lambda g: (g[0], -1 if g[1] is None else g[1])):
        entry = splits.setdefault(split, {"total": 0, "unlabeled": 0, "class_counts": [0] * len(class_names)})
        entry["total"] += n
        if label is None:
            entry["unlabeled"] += n
        else:
            entry["class_counts"][label] += n
    return splits


SHAPE = ("height", "width", "channels", "image_format")


def _sum_by(tally: list, keys: tuple[str, ...]) -> list[dict]:
    """The counts of ``tally`` (rows with a "count") summed over ``keys``."""
    sums: Counter = Counter()
    for row in tally:
        sums[tuple(row[k] for k in keys)] += row["count"]
    return [{**dict(zip(keys, key)), "count": n} for key, n in sums.items()]


def written_ids(spark: SparkSession, images: str) -> tuple[int, list[str]]:
    """(rows, up to 5 ids written more than once) of the images Spark wrote, read back from disk:
    one job over the id column (a second, only when an id repeats, for the examples)."""
    per_id = spark.read.parquet(fs.spark_path(images)).groupBy("id").count()
    totals = per_id.agg(F.sum("count").alias("rows"), F.max("count").alias("most")).first()
    if not totals["rows"]:
        return 0, []
    repeated = per_id.filter("count > 1").limit(5).collect() if totals["most"] > 1 else []
    return int(totals["rows"]), [r["id"] for r in repeated]


def run_ingest(spark: SparkSession, cfg: Config) -> dict:
    """Ingest ``cfg.ingest.dataset`` into ``cfg.ingest.out``; returns the ingest.json report."""
    icfg, started = cfg.ingest, time.time()
    source = get_source(icfg.dataset)
    with staged(icfg.out, icfg.overwrite, "ingest", inputs=[*icfg.source, *([icfg.root] if icfg.root else [])]) as tmp:
        plan = source.plan(icfg, spark.sparkContext.defaultParallelism)
        ctx = TaskContext(tuple(plan.class_names), tuple(icfg.image_size) if icfg.image_size else source.size,
                          icfg.channels or source.channels, plan.label_type, int(icfg.max_record_mb * 2**20))
        units = broadcast_units(spark, plan)
        records = read_records(spark, source.name, plan, ctx, units).persist()
        try:
            # one pass fills the cache and counts the records by outcome, split, class and image shape
            tally = records.groupBy("reason", "split", "label", *SHAPE).count().collect()
            accepted(records, plan.class_names).write.parquet(fs.spark_path(fs.join(tmp, IMAGES)))
            rejected(records).write.parquet(fs.spark_path(fs.join(tmp, REJECTED)))
        finally:
            records.unpersist()
            units.destroy()
        groups = _sum_by(tally, ("reason", "split", "label"))
        shapes = _sum_by([t for t in tally if t["reason"] is None], SHAPE)
        written, duplicates = written_ids(spark, fs.join(tmp, IMAGES))
        if duplicates:
            raise IngestError(f"{icfg.dataset}: ids are not unique, e.g. {duplicates}")
        by_reason = Counter(read_table(fs.join(tmp, REJECTED), columns=["reason"]).column("reason").to_pylist())
        n_input, n_rejected = sum(g["count"] for g in groups), sum(by_reason.values())
        if n_input != written + n_rejected:
            raise IngestError(f"lost records: {n_input} input records, {written} written + {n_rejected} rejected")
        counted = sum(g["count"] for g in groups if g["reason"] is None)
        if written != counted:  # the counts per split and class below are of the records counted, not recomputed ones
            raise IngestError(f"the records changed while written: {counted} accepted when counted, {written} written")
        if plan.expected_records is not None and n_input != plan.expected_records:
            raise IngestError(f"lost records: the plan listed {plan.expected_records} input records, "
                              f"the tasks accounted for {n_input}")
        rejected_by_split: Counter = Counter()
        for g in groups:
            if g["reason"]:
                rejected_by_split[str(g["split"])] += g["count"]
        report = Ingest(
            dataset=icfg.dataset,
            sources=icfg.source,
            class_names=plan.class_names,
            num_classes=len(plan.class_names),
            declared={"image_size": list(ctx.size) if ctx.size else None, "channels": ctx.channels},
            splits=_split_counts([(g["split"], g["label"], g["count"]) for g in groups if g["reason"] is None],
                                 plan.class_names),
            image_shapes=sorted(({k: r[k] for k in ("height", "width", "channels", "image_format", "count")}
                                 for r in shapes), key=lambda s: -s["count"]),
            rejected={"total": n_rejected, "by_reason": dict(sorted(by_reason.items())),
                      "by_split": dict(sorted(rejected_by_split.items()))},
            input_records=n_input,
            planned_records=plan.expected_records,
            written=written,
            plan=plan.info,
            normalization=normalization(cfg, source),
            config=to_dict(icfg), train_settings=icfg.train_settings,
            **stamp(),
            duration_s=round(time.time() - started, 2),
        )
        report.write(tmp)
    return report.to_dict()


def normalization(cfg: Config, source) -> Optional[dict]:
    """The normalisation that travels with the data to every training on it: the config's
    ``train.data.norm_mean``/``norm_std`` (a conf/datasets/ layer), else the data set's reference one."""
    if cfg.train.data.norm_mean is not None:
        return {"mean": cfg.train.data.norm_mean, "std": cfg.train.data.norm_std, "from": "config"}
    if source.normalization is not None:
        return {"mean": source.normalization[0], "std": source.normalization[1], "from": f"{source.name} reference"}
    return None


def summary(report: dict) -> str:
    """A few lines for the console: per split and class, then what was rejected and why."""
    lines = [f"{report['dataset']}: {report['written']} images written, {report['rejected']['total']} rejected "
             f"(of {report['input_records']} input records)"]
    names = report["class_names"]
    for split, s in report["splits"].items():
        per_class = ", ".join(f"{n}={c}" for n, c in zip(names, s["class_counts"]))
        extra = f", unlabeled={s['unlabeled']}" if s["unlabeled"] else ""
        lines.append(f"  {split:>10}: {s['total']:>7}  [{per_class}{extra}]")
    for reason, n in report["rejected"]["by_reason"].items():
        lines.append(f"  rejected {reason}: {n} ({schema.REJECT_REASONS.get(reason, '')})")
    return "\n".join(lines)
