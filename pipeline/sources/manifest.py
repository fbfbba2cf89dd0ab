"""Manifests listing ``path label``: whitespace lists (ImageNet-LT's split files, no header; a path
may contain spaces, the label is the last field) or CSV files with a ``path,label`` header.
Paths are relative to ``ingest.root`` (default: the manifest's folder) and must stay under it:
absolute paths, URIs, ``..`` and symbolic links that lead elsewhere are rejected (``outside_root``)
without reading them. Labels are class
indices (``ingest.label_type=index``; classes 0..max) or class names (``name``; sorted)."""
from __future__ import annotations

import csv
import io

from pipeline import fs
from pipeline.config import IngestConfig
from pipeline.errors import shown
from pipeline.sources import (Plan, Source, SourceError, TaskContext, chunks, image_row, outside_root, register,
                              rejected_row)

KNOWN_SPLITS = ("train", "val", "test", "unlabeled", "extra")


def _split_of(manifest: str, cfg: IngestConfig) -> str:
    if cfg.split:
        return cfg.split
    stem = fs.name(manifest).rsplit(".", 1)[0].lower()
    last = stem.replace("-", "_").rsplit("_", 1)[-1]
    return last if last in KNOWN_SPLITS else "train"


FIELD_MAX = 4096  # characters of a path or a label: PATH_MAX; a longer field is rejected, not carried along


def parse(manifest: str, text: str) -> list[tuple[int, str, str | None]]:
    """(line number, path, raw label or None) of each record; blank lines and # comments are skipped."""
    if manifest.lower().endswith(".csv"):
        reader = csv.reader(io.StringIO(text))
        try:
            header = [h.strip().lower() for h in next(reader, [])]
            if "path" not in header or "label" not in header:
                raise SourceError(f"manifest {manifest}: a CSV manifest needs a header with 'path' and 'label' "
                                  f"columns, found {shown(header)}")
            p, l = header.index("path"), header.index("label")
            return [(n, row[p] if p < len(row) else "", row[l] if l < len(row) else None)
                    for n, row in enumerate(reader, start=2) if any(cell.strip() for cell in row)]
        except csv.Error as e:  # a field over csv's limit (128 KB), a NUL byte...
            raise SourceError(f"manifest {manifest}: line {reader.line_num}: {e}") from None
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            fields = line.rsplit(None, 1)
            records.append((n, fields[0], fields[1] if len(fields) == 2 else None))
    return records


def _class_names(records: list, cfg: IngestConfig) -> list[str]:
    labels = [(r[0], r[3]) for r in records if r[3] is not None and r[3].strip()]
    if cfg.label_type == "name":
        return sorted({label.strip() for _, label in labels})
    if cfg.num_classes is not None:  # larger indices become bad_label rejects
        return [str(c) for c in range(cfg.num_classes)]
    indices = [(int(label), where) for where, label in labels if label.strip().lstrip("-").isdigit()]
    if not indices:
        return []
    top, where = max(indices)
    distinct = len({i for i, _ in indices if i >= 0})
    if distinct * 2 < top + 1:  # e.g. one typo 100000 among labels 0..9 would make 100,001 classes
        raise SourceError(f"manifest: the largest label {top} ({where}) would make {top + 1} classes, but only "
                          f"{distinct} distinct labels are used: a typo? Set --set ingest.num_classes=N to reject "
                          f"labels >= N")
    return [str(c) for c in range(top + 1)]


@register("manifest")
class Manifest(Source):
    def plan(self, cfg: IngestConfig, parallelism: int) -> Plan:
        if not cfg.source:
            raise SourceError("manifest: give the manifest file(s) with --source")
        records = []
        for manifest in map(fs.normalize, cfg.source):
            if not fs.exists(manifest):
                raise SourceError(f"manifest: {manifest} does not exist")
            root = fs.normalize(cfg.root) if cfg.root else fs.normalize(manifest).rsplit("/", 1)[0]
            split = _split_of(manifest, cfg)
            try:
                text = fs.read_text(manifest)
            except UnicodeDecodeError as e:
                raise SourceError(f"manifest {manifest}: not UTF-8 text (byte {e.start}: {e.reason}); a binary "
                                  f"file?") from None
            for line, path, label in parse(manifest, text):
                records.append((f"{manifest}:{line}", root, split, label, path))
        too_long = {i for i, (_, _, _, label, path) in enumerate(records) if max(len(path), len(label or "")) > FIELD_MAX}
        class_names = _class_names([r for i, r in enumerate(records) if i not in too_long], cfg)
        if not class_names:
            raise SourceError(f"manifest: no usable {cfg.label_type} labels in {', '.join(cfg.source)}")
        seen: set[str] = set()
        entries = []
        for i, (where, root, split, label, path) in enumerate(records):
            if i in too_long:  # kept as a reject: its length, not its content
                entries.append({"where": where, "root": root, "path": path[:200], "split": split, "label": None,
                                "id": None, "too_long": max(len(path), len(label or ""))})
                continue
            image_id = f"{split}/{path}"
            entries.append({"where": where, "root": root, "path": path, "split": split, "label": label,
                            "id": image_id, "duplicate": image_id in seen})
            seen.add(image_id)
        units = [{"entries": chunk} for chunk in chunks(entries, cfg.files_per_task)]
        return Plan(class_names, units, {"manifests": [fs.normalize(m) for m in cfg.source]},
                    label_type=cfg.label_type, expected_records=len(entries))

    def read(self, unit: dict, ctx: TaskContext):
        for e in unit["entries"]:
            if e.get("too_long"):
                yield rejected_row(e["path"], e["split"], "too_large", f"{e['where']}: a field of {e['too_long']:,} "
                                                                       f"characters (at most {FIELD_MAX})")
                continue
            escape = outside_root(e["root"], e["path"])
            if escape:  # nothing is read: the bytes of /etc/passwd do not belong in _rejected/ either
                yield rejected_row(e["path"], e["split"], "outside_root", f"{e['where']}: {escape}", e["label"])
                continue
            e["uri"] = fs.join(e["root"], e["path"])
            try:
                size = fs.info(e["uri"]).size
                if size is not None and size > ctx.max_record_bytes:
                    yield rejected_row(e["uri"], e["split"], "too_large", f"{e['where']}: {size:,} bytes, over "
                                       f"ingest.max_record_mb ({ctx.max_record_bytes / 2**20:g} MB)", e["label"])
                    continue
                data = fs.read_bytes(e["uri"])
            except OSError as err:
                yield rejected_row(e["uri"], e["split"], "missing_file", f"{e['where']}: cannot read: {err}",
                                   e["label"])
                continue
            if e["duplicate"]:
                yield rejected_row(e["uri"], e["split"], "duplicate", f"{e['where']}: listed again in this split",
                                   e["label"], data)
            elif e["label"] is None:
                yield rejected_row(e["uri"], e["split"], "bad_label", f"{e['where']}: no label field", None, data)
            else:
                yield image_row(ctx, e["id"], e["split"], e["label"], e["uri"], encoded=data)
