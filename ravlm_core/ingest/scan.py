"""Ingest: diff a source against the store → content shards for new bytes → memberships applied to the tables.

scan_source reads the source, hashes every file and plans the change (added, changed, re-annotated, removed
listings; image contents never stored before). write_shard decodes new contents into content-named Parquet
shards, load_shard registers them in `contents`, and membership.apply_plan makes `images`, `qa`, the vector
labels and the prediction tables say what the source now says. Every step is idempotent: a rerun after a crash
plans only what is still missing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ravlm_core.errors import UserError, first_line
from ravlm_core.imaging import DEFAULT_MAX_PIXELS, ImageRejected, decode_image, signature, thumbnail_jpeg
from ravlm_core.ingest.membership import (ADDED, CHANGED, REANNOTATED, REMOVED, ApplyResult, annotation_of, apply_plan,
                                   member_id_of)
from ravlm_core.ingest.sources import BadRow, SourceRecord, open_source
from ravlm_core.contents import shards_of
from ravlm_core.locations import exists, join, list_files, remove, write_parquet_atomically
from ravlm_core.store import CONTENTS, CONTENTS_SCHEMA, IMAGES, Store, sql_quote

log = logging.getLogger(__name__)

QA_TYPE = pa.list_(pa.struct([("question", pa.string()), ("answer", pa.string()), ("question_type", pa.string()),
                              ("answers", pa.list_(pa.string()))]))
CONTENT_PLAN_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("path", pa.string()), ("ref", pa.string()), ("shard", pa.string())]
)
MEMBER_PLAN_SCHEMA = pa.schema(
    [("member_id", pa.string()), ("image_id", pa.string()), ("old_image_id", pa.string()), ("change", pa.string()),
     ("dataset", pa.string()), ("split", pa.string()), ("path", pa.string()), ("uri", pa.string()),
     ("caption", pa.string()), ("captions", pa.list_(pa.string())), ("extra", pa.string()),
     ("annotation", pa.string()), ("qa", QA_TYPE)]
)
SHARD_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("image", pa.binary()),
     *(f for f in CONTENTS_SCHEMA if f.name not in ("image_id", "shard"))]
)
THUMBNAIL_SIDE = 128
# Rows per Parquet row group while writing a shard: bounds memory to this many images' bytes.
WRITE_BATCH_ROWS = 64
# Dataset names become folder and label names; keep them to one safe path component.
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
FIX_FILE = "fix or remove the file and rerun"
CONTENT_DIR = "content"


@dataclass
class ScanResult:
    dataset: str
    plan_path: str  # planned membership changes ("" when the store already says what the source says)
    content_path: str  # new image contents to write into shards ("" when none)
    shards: list[str]
    images_seen: int  # listings whose file could be read
    added: int
    changed: int  # new bytes at a known path
    reannotated: int  # same bytes, new split / caption / QA / extra columns
    removed: int  # listings gone from the source
    unchanged: int
    new_content: int  # distinct image contents the store has never held
    bad_rows: list[BadRow] = field(default_factory=list)


@dataclass
class ShardResult:
    path: str
    n_images: int
    bad_rows: list[BadRow]


@dataclass
class IngestSummary:
    dataset: str
    images_seen: int
    added: int
    changed: int
    reannotated: int
    removed: int
    unchanged: int
    new_content: int
    bad_rows: list[BadRow]
    dry_run: bool = False


def image_id_of(path: Path) -> str:
    """Content hash of a file: identical bytes under any name give the same id."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def check_dataset_name(dataset: str) -> None:
    if not DATASET_NAME.fullmatch(dataset):
        raise UserError(f"dataset name {dataset!r} must be letters, digits, '_', '.' or '-' (not starting with . _ -)")


def scan_source(source: str, dataset: str, staging_dir: Path, store: Store, shard_size: int,
                manifest: Path | None = None, dry_run: bool = False, source_format: str = "auto",
                annotations: Path | None = None, questions: Path | None = None) -> ScanResult:
    """Read and hash a source, diff it against `dataset`'s stored listings, and plan the change.

    Args:
        source: "easy-vqa" or a folder (see `sources.open_source`).
        dataset: the dataset name (one path component: letters, digits, `_ . -`).
        staging_dir: where the plan files are written (`<dataset>/plan-<hash>.parquet`, no image bytes).
        store: the store to diff against (read only).
        shard_size: most new image contents per shard.
        manifest: an explicit manifest for a folder source.
        dry_run: count the change without writing anything.
        source_format: auto, manifest, folder, coco or vqav2 (`sources.FORMATS`); `annotations` and `questions`
            name the COCO / VQAv2 JSON files when they are not found in the folder.
    Returns:
        Counts of each kind of change, the plan files and the new content shards to write.
    Raises:
        UserError: bad dataset name or shard size, unusable source or manifest (`sources.ManifestError`).
    """
    check_dataset_name(dataset)
    if shard_size < 1:
        raise UserError(f"shard_size must be at least 1, got {shard_size}")
    records, bad_rows = open_source(source, manifest, fmt=source_format, annotations=annotations,
                                    questions=questions)
    listed, unreadable = _hash(records)
    stored = _stored_members(store, dataset)
    # A listing whose row or file is broken right now is still listed: it is reported, not removed.
    present = {member_id_of(dataset, r.relpath) for r in records} | {
        member_id_of(dataset, b.relpath) for b in bad_rows if b.relpath}
    plan = [_plan_row(dataset, record, image_id, stored.get(member_id_of(dataset, record.relpath)))
            for record, image_id in listed]
    plan = [row for row in plan if row["change"]]
    plan += [{"member_id": member_id, "image_id": "", "old_image_id": old["image_id"], "change": REMOVED,
              "dataset": dataset} for member_id, old in stored.items() if member_id not in present and old["active"]]
    known = _known_contents(store, {row["image_id"] for row in plan if row["change"] in (ADDED, CHANGED)})
    # Stored bytes whose shard vanished or no longer reads are written again from the source: no listed image
    # is ever left without its bytes (and so without vectors) because a shard was lost.
    lost = _contents_without_shard(store, {image_id for _, image_id in listed})
    new_content = _new_content(listed, plan, known, lost)
    shard_of = _assign_shards(new_content, shard_size)
    counts = {change: sum(row["change"] == change for row in plan) for change in (ADDED, CHANGED, REANNOTATED, REMOVED)}
    result = ScanResult(dataset, "", "", sorted(set(shard_of.values())), len(listed), counts[ADDED], counts[CHANGED],
                        counts[REANNOTATED], counts[REMOVED], len(listed) - counts[ADDED] - counts[CHANGED]
                        - counts[REANNOTATED], len(new_content), bad_rows + unreadable)
    if not dry_run and (plan or new_content):
        folder = join(staging_dir, dataset)
        digest = _digest([f"{r['member_id']}:{r['image_id']}:{r.get('annotation')}" for r in plan] + sorted(lost))
        if plan:
            result.plan_path = str(join(folder, f"plan-{digest}.parquet"))
            write_parquet_atomically(result.plan_path, MEMBER_PLAN_SCHEMA,
                                     [pa.Table.from_pylist(plan, MEMBER_PLAN_SCHEMA)])
        if new_content:
            rows = [{"image_id": i, "path": str(r.path), "ref": r.ref, "shard": shard_of[i]}
                    for i, r in sorted(new_content.items(), key=lambda item: (shard_of[item[0]], item[0]))]
            result.content_path = str(join(folder, f"content-{digest}.parquet"))
            write_parquet_atomically(result.content_path, CONTENT_PLAN_SCHEMA,
                                     [pa.Table.from_pylist(rows, CONTENT_PLAN_SCHEMA)])
    log.info("%s: %d listed; %d added, %d changed, %d re-annotated, %d removed, %d unchanged; %d new images in %d "
             "shards; %d bad rows", dataset, result.images_seen, result.added, result.changed, result.reannotated,
             result.removed, result.unchanged, result.new_content, len(result.shards), len(result.bad_rows))
    return result


def _hash(records: list[SourceRecord]) -> tuple[list[tuple[SourceRecord, str]], list[BadRow]]:
    listed, bad = [], []
    for record in records:
        try:
            listed.append((record, image_id_of(record.path)))
        except OSError as err:
            bad.append(BadRow(record.ref, f"cannot read {record.path} ({err.strerror or err}): {FIX_FILE}",
                              record.relpath))
    return listed, bad


def _stored_members(store: Store, dataset: str) -> dict[str, dict]:
    """member id -> {image_id, annotation, active} of the dataset's stored listings (removed ones included)."""
    if not store.has(IMAGES):
        return {}
    rows = store.read(IMAGES, columns=["member_id", "image_id", "annotation", "removed_at"],
                      where=f"dataset = {sql_quote(dataset)}")
    return {r["member_id"]: {"image_id": r["image_id"], "annotation": r["annotation"],
                             "active": r["removed_at"] is None} for r in rows.to_pylist()}


def _plan_row(dataset: str, record: SourceRecord, image_id: str, stored: dict | None) -> dict:
    qa = [{**vars(pair), "answers": list(pair.answers)} for pair in _distinct_qa(record.qa)]
    extra = json.dumps(record.extra, sort_keys=True) if record.extra else None
    captions = record.captions or ([record.caption] if record.caption else [])
    annotation = annotation_of(record.split, record.caption, record.extra, qa, captions)
    if stored is None or not stored["active"]:
        change = ADDED
    elif stored["image_id"] != image_id:
        change = CHANGED
    elif stored["annotation"] != annotation:
        change = REANNOTATED
    else:
        change = ""
    return {"member_id": member_id_of(dataset, record.relpath), "image_id": image_id,
            "old_image_id": stored["image_id"] if stored and change == CHANGED else None, "change": change,
            "dataset": dataset, "split": record.split, "path": record.relpath, "uri": str(record.path),
            "caption": record.caption, "captions": captions, "extra": extra, "annotation": annotation, "qa": qa}


def _distinct_qa(pairs):
    """First pair per (question, answer): a listing asked the same thing twice has one QA row."""
    first = {}
    for pair in pairs:
        first.setdefault((pair.question, pair.answer), pair)
    return list(first.values())


def _known_contents(store: Store, image_ids: set[str]) -> set[str]:
    return store.existing_ids(CONTENTS, "image_id", image_ids) if image_ids else set()


def _contents_without_shard(store: Store, image_ids: set[str]) -> set[str]:
    """Stored contents among `image_ids` whose shard file is missing or unreadable (each reported once)."""
    if not image_ids or not store.has(CONTENTS):
        return set()
    shard_of = shards_of(store, image_ids)
    lost = set()
    for shard in sorted(set(shard_of.values())):
        try:
            pq.ParquetFile(shard).metadata  # noqa: B018 - reads the footer: a truncated file fails here
            continue
        except (OSError, pa.ArrowException) as err:
            reason = "is missing" if not exists(shard) else f"cannot be read ({first_line(err) or type(err).__name__})"
        ids = {i for i, s in shard_of.items() if s == shard}
        log.warning("shard %s %s: its %d images are written again from the source", shard, reason, len(ids))
        lost |= ids
    return lost


def _new_content(listed, plan, known: set[str], lost: set[str] = frozenset()) -> dict[str, SourceRecord]:
    """image id -> a record to read its bytes from, for contents the plan needs and the store lacks, and for
    stored contents whose shard was lost."""
    needed = ({row["image_id"] for row in plan if row["change"] in (ADDED, CHANGED)} - known) | lost
    new: dict[str, SourceRecord] = {}
    for record, image_id in listed:
        if image_id in needed:
            new.setdefault(image_id, record)
    return new


def _digest(parts: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(parts)).encode()).hexdigest()[:12]


def _assign_shards(records: dict[str, SourceRecord], shard_size: int) -> dict[str, str]:
    """image id -> shard name. Ids are sorted before chunking, so the names depend only on the set of new ids."""
    ids = sorted(records)
    shard_of = {}
    for start in range(0, len(ids), shard_size):
        chunk = ids[start : start + shard_size]
        shard_of.update(dict.fromkeys(chunk, f"images-{_digest(chunk)}"))
    return shard_of


def write_shard(content_path: str, shard: str, parquet_dir: Path | str, max_pixels: int) -> ShardResult:
    """Validate, decode and store one shard of new image contents as `parquet_dir/content/<shard>.parquet`.

    Returns:
        The shard path and count; images that fail validation are left out and listed in `bad_rows`. When none
        is left, no shard is written and the path is "".
    Raises:
        ValueError: `shard` has no rows in `content_path`.
    """
    rows = pq.read_table(content_path, filters=[("shard", "==", shard)]).to_pylist()
    if not rows:
        raise ValueError(f"shard {shard!r} has no rows in {content_path}: rerun the ingest")
    path = join(parquet_dir, CONTENT_DIR, f"{shard}.parquet")  # a URI when the data dir is on object storage
    bad: list[BadRow] = []
    written = 0

    def batches():
        nonlocal written
        # A generator, so only one batch of image bytes is in memory at a time.
        for start in range(0, len(rows), WRITE_BATCH_ROWS):
            good = []
            for row in rows[start : start + WRITE_BATCH_ROWS]:
                result = _shard_row(row, max_pixels)
                (bad if isinstance(result, BadRow) else good).append(result)
            written += len(good)
            yield pa.Table.from_pylist(good, SHARD_SCHEMA)

    write_parquet_atomically(path, SHARD_SCHEMA, batches())
    log.info("%s: %d images, %d bad", path, written, len(bad))
    if not written:
        # Every image of the shard failed validation: no empty shard for later stages to trip over.
        remove(path)
        return ShardResult("", 0, bad)
    return ShardResult(str(path), written, bad)


def _shard_row(row: dict, max_pixels: int) -> dict | BadRow:
    """One new content as a shard row with its bytes, size and thumbnail, or why the image is unusable."""
    path, ref = Path(row["path"]), row["ref"]
    try:
        data = path.read_bytes()
    except OSError as err:
        return BadRow(ref, f"cannot read {path} ({err.strerror or err}): {FIX_FILE}")
    if hashlib.blake2b(data, digest_size=16).hexdigest() != row["image_id"]:
        return BadRow(ref, f"{path} changed after it was scanned: rerun the ingest")
    try:
        decoded = decode_image(data, max_pixels)
    except ImageRejected as err:
        return BadRow(ref, f"{path}: {err}")
    return {"image_id": row["image_id"], "image": data, "width": decoded.width, "height": decoded.height,
            "format": decoded.format, "source_mode": decoded.source_mode,
            "thumbnail": thumbnail_jpeg(decoded.image, THUMBNAIL_SIDE), "signature": signature(decoded.image)}


def load_shard(store: Store, shard_path: str) -> int:
    """Register one content shard's rows (without the bytes) in `contents`; returns how many were new."""
    table = pq.read_table(shard_path, columns=[name for name in SHARD_SCHEMA.names if name != "image"])
    table = table.append_column("shard", pa.array([shard_path] * table.num_rows, pa.string()))
    new = store.upsert(CONTENTS, table.select(CONTENTS_SCHEMA.names).cast(CONTENTS_SCHEMA), "image_id")
    log.info("%s: %d new image contents", shard_path, new)
    return new


def ingest_all(source: str, dataset: str, store: Store, data_dir: Path | str, *, manifest: Path | None = None,
               shard_size: int = 1000, dry_run: bool = False, keep_removed: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS, source_format: str = "auto", annotations: Path | None = None,
               questions: Path | None = None) -> IngestSummary:
    """The whole ingest in one process, step by step as the flow runs it (for notebooks and tests)."""
    scan = scan_source(source, dataset, join(data_dir, "staging"), store, shard_size, manifest, dry_run, source_format,
                       annotations, questions)
    bad = list(scan.bad_rows)
    if not dry_run:
        for shard in scan.shards:
            written = write_shard(scan.content_path, shard, join(data_dir, "parquet"), max_pixels)
            bad += written.bad_rows
            if written.path:
                load_shard(store, written.path)
        if scan.plan_path:
            applied = apply_plan(store, scan.plan_path, keep_removed)
            return summarize(scan, applied, bad)
    return summarize(scan, None, bad, dry_run)


def summarize(scan: ScanResult, applied: ApplyResult | None, bad_rows: list[BadRow], dry_run: bool = False) -> IngestSummary:
    """What the run did: the applied counts when it applied a plan, else what the scan found."""
    counts = applied or scan
    return IngestSummary(scan.dataset, scan.images_seen, counts.added, counts.changed, counts.reannotated,
                         counts.removed, scan.unchanged, scan.new_content, bad_rows, dry_run)


def stored_shards(store: Store) -> list[str]:
    """The shards the `contents` table says hold the store's image bytes: what embedding reads. A file the
    store no longer points to (a damaged shard whose bytes were written again) is never read."""
    if not store.has(CONTENTS):
        return []
    return sorted(set(store.read(CONTENTS, columns=["shard"]).column("shard").to_pylist()))


def content_shards(parquet_dir: Path | str) -> list[str]:
    """Sorted paths of every content shard (never a half-written one)."""
    return list_files(join(parquet_dir, CONTENT_DIR), ".parquet")
