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

from ravlm_core.contents import shards_of
from ravlm_core.errors import UserError, first_line
from ravlm_core.ids import image_id_of, member_id_of, shard_name
from ravlm_core.ingest.membership import ADDED, CHANGED, REANNOTATED, REMOVED, annotation_of
from ravlm_core.ingest.records import FIX_FILE, BadRow, SourceRecord
from ravlm_core.ingest.sources import open_source
from ravlm_core.locations import exists, join, write_parquet_atomically
from ravlm_core.schemas import CONTENTS, IMAGES
from ravlm_core.store import Store, sql_quote

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
# Dataset names become folder and label names; keep them to one safe path component.
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class ScanResult:
    dataset: str
    plan_path: str  # planned membership changes ("" when the store already says what the source says)
    content_path: str  # new image contents to write into shards ("" when none)
    shards: list[str]
    images_seen: int  # listings whose file could be read
    captions: int  # reference captions of those listings (a COCO image or a manifest's rows for it give several)
    added: int
    changed: int  # new bytes at a known path
    reannotated: int  # same bytes, new split / caption / QA / extra columns
    removed: int  # listings gone from the source
    unchanged: int
    new_content: int  # distinct image contents the store has never held
    bad_rows: list[BadRow] = field(default_factory=list)


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
        UserError: bad dataset name or shard size, unusable source or manifest (`records.ManifestError`).
    """
    check_dataset_name(dataset)
    if shard_size < 1:
        raise UserError(f"shard_size must be at least 1, got {shard_size}")
    records, bad_rows = open_source(source, manifest, source_format=source_format, annotations=annotations,
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
    n_captions = sum(len(_captions(record)) for record, _ in listed)
    result = ScanResult(dataset, "", "", sorted(set(shard_of.values())), len(listed), n_captions, counts[ADDED],
                        counts[CHANGED], counts[REANNOTATED], counts[REMOVED],
                        len(listed) - counts[ADDED] - counts[CHANGED] - counts[REANNOTATED], len(new_content),
                        bad_rows + unreadable)
    if not dry_run and (plan or new_content):
        folder = join(staging_dir, dataset)
        digest = _plan_digest([f"{r['member_id']}:{r['image_id']}:{r.get('annotation')}" for r in plan] + sorted(lost))
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
    log.info("%s: %d listed with %d captions; %d added, %d changed, %d re-annotated, %d removed, %d unchanged; %d new "
             "images in %d shards; %d bad rows", dataset, result.images_seen, result.captions, result.added,
             result.changed, result.reannotated, result.removed, result.unchanged, result.new_content,
             len(result.shards), len(result.bad_rows))
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
    captions = _captions(record)
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


def _captions(record: SourceRecord) -> list[str]:
    return record.captions or ([record.caption] if record.caption else [])


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


def _plan_digest(parts: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(parts)).encode()).hexdigest()[:12]


def _assign_shards(records: dict[str, SourceRecord], shard_size: int) -> dict[str, str]:
    """image id -> shard name. Ids are sorted before chunking, so the names depend only on the set of new ids."""
    ids = sorted(records)
    shard_of = {}
    for start in range(0, len(ids), shard_size):
        chunk = ids[start : start + shard_size]
        shard_of.update(dict.fromkeys(chunk, shard_name(chunk)))
    return shard_of


