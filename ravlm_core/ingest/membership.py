"""Memberships: which datasets and splits list which image content, and keeping every table true to them.

An image's bytes (its content hash, `image_id`) are stored and embedded once; each listing of those bytes in a
dataset at a path is a membership (`member_id`) with its own split and annotations. Ingest diffs a source against
the memberships stored for its dataset and applies the difference here, so that `images`, `qa`, the vector
tables' `memberships` labels and the prediction tables always say what the sources now say.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from ravlm_core.ids import qa_id_of
from ravlm_core.schemas import (
    ACTIVE,
    CONTENTS,
    IMAGES,
    IMAGES_SCHEMA,
    PREDICTION_TABLES,
    QA,
    QA_SCHEMA,
    membership_label,
)
from ravlm_core.store import Store, chunks, in_list

log = logging.getLogger(__name__)

ADDED, CHANGED, REANNOTATED, REMOVED = "added", "changed", "reannotated", "removed"


def annotation_of(split: str, caption: str | None, extra: dict, qa: list[dict],
                  captions: list[str] | None = None) -> str:
    """Digest of everything a source says about one listing besides its bytes.

    Several captions and human answers count only where a source gives them, so listings ingested before they
    were stored keep their digest (and their predictions).
    """
    pairs = sorted((p["question"], p["answer"] or "", p.get("question_type") or "", *(
        [list(p["answers"])] if p.get("answers") else [])) for p in qa)
    parts = [split, caption, extra, pairs] + ([captions] if captions and captions != [caption] else [])
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass
class ApplyResult:
    added: int
    changed: int
    reannotated: int
    removed: int
    skipped: int  # planned listings whose image could not be stored (reported by the shard writer)
    qa_rows: int


def apply_plan(store: Store, plan_path: str, keep_removed: bool = False) -> ApplyResult:
    """Write a scan's planned membership changes into `images` and `qa`, drop what they replace, and relabel vectors.

    Order matters for a crash: predictions of touched listings are deleted *before* the listings are rewritten, so
    a rerun (which sees them still changed) never leaves a stale prediction behind.
    """
    plan = pq.read_table(plan_path).to_pylist()
    for table, schema in ((IMAGES, IMAGES_SCHEMA), (QA, QA_SCHEMA)):
        if store.has(table):
            store.ensure_columns(table, schema)
    removed = [r for r in plan if r["change"] == REMOVED]
    wanted = [r for r in plan if r["change"] != REMOVED]
    contents = _contents(store, [r["image_id"] for r in wanted])
    writable = [r for r in wanted if r["image_id"] in contents]
    touched = [r["member_id"] for r in writable if r["change"] != ADDED] + [r["member_id"] for r in removed]
    for table in PREDICTION_TABLES:
        for ids in chunks(touched):
            store.delete(table, in_list("member_id", ids))

    now = datetime.now(timezone.utc)
    image_rows = [_image_row(r, contents[r["image_id"]], now) for r in writable]
    store.upsert(IMAGES, pa.Table.from_pylist(image_rows, IMAGES_SCHEMA), "member_id")
    qa_rows = [row for r in writable for row in _qa_rows(r)]
    _replace_qa(store, [r["member_id"] for r in writable], qa_rows)
    _remove(store, [r["member_id"] for r in removed], keep_removed, now)

    affected = {r["image_id"] for r in writable} | {r["old_image_id"] for r in plan if r["old_image_id"]}
    sync_vector_memberships(store, sorted(affected))
    _drop_unlisted_contents(store, sorted(affected))
    counts = defaultdict(int, {change: sum(r["change"] == change for r in writable) for change in (ADDED, CHANGED, REANNOTATED)})
    result = ApplyResult(counts[ADDED], counts[CHANGED], counts[REANNOTATED], len(removed),
                         len(wanted) - len(writable), len(qa_rows))
    log.info("memberships: %s", result)
    return result


def _contents(store: Store, image_ids: list[str]) -> dict[str, dict]:
    found = {}
    for ids in chunks(sorted(set(image_ids))):
        rows = store.read(CONTENTS, columns=["image_id", "width", "height", "format"], where=in_list("image_id", ids))
        found.update({row["image_id"]: row for row in rows.to_pylist()})
    return found


def _image_row(plan_row: dict, content: dict, now: datetime) -> dict:
    row = {name: plan_row.get(name) for name in IMAGES_SCHEMA.names}
    row.update(width=content["width"], height=content["height"], format=content["format"], ingested_at=now,
               removed_at=None)
    return row


def _qa_rows(plan_row: dict) -> list[dict]:
    rows = {}
    for pair in plan_row["qa"] or []:
        qa_id = qa_id_of(plan_row["member_id"], plan_row["image_id"], pair["question"], pair["answer"],
                         pair["question_type"])
        rows.setdefault(qa_id, {"qa_id": qa_id, "member_id": plan_row["member_id"], "image_id": plan_row["image_id"],
                                "dataset": plan_row["dataset"], "split": plan_row["split"], **pair,
                                "removed_at": None})
    return list(rows.values())


def _replace_qa(store: Store, member_ids: list[str], rows: list[dict]) -> None:
    """The QA pairs of these listings become exactly `rows`: stale pairs go, new ones are upserted."""
    keep = {row["qa_id"] for row in rows}
    for ids in chunks(member_ids):
        stored = store.existing_ids(QA, "qa_id", where=in_list("member_id", ids))
        for stale in chunks(sorted(stored - keep)):
            store.delete(QA, in_list("qa_id", stale))
    store.upsert(QA, pa.Table.from_pylist(rows, QA_SCHEMA), "qa_id")


def _remove(store: Store, member_ids: list[str], keep_removed: bool, now: datetime) -> None:
    for ids in chunks(member_ids):
        where = in_list("member_id", ids)
        for table in (IMAGES, QA):
            if keep_removed and store.has(table):
                store.table(table).update(where=f"{where} AND {ACTIVE}", values={"removed_at": now})
            else:
                store.delete(table, where)


def _drop_unlisted_contents(store: Store, image_ids: list[str]) -> None:
    """Contents no listing refers to any more (not even one kept with --keep-removed) leave `contents` too."""
    for ids in chunks(image_ids):
        unlisted = set(ids) - store.existing_ids(IMAGES, "image_id", where=in_list("image_id", ids))
        if unlisted:
            store.delete(CONTENTS, in_list("image_id", sorted(unlisted)))


def sync_vector_memberships(store: Store, image_ids: list[str]) -> int:
    """Relabel these images' rows in every image vector table with the sets that now list them.

    An image no dataset lists any more leaves every vector table, so it can never be retrieved again.
    Returns how many vector rows were relabelled or deleted.
    """
    tables = store.image_vector_tables()
    if not tables or not image_ids:
        return 0
    wanted = memberships_of(store, image_ids)
    touched = 0
    for table in tables:
        for ids in chunks(image_ids):
            rows = store.read(table, columns=["image_id", "memberships"], where=in_list("image_id", ids))
            by_labels: dict[tuple, list[str]] = defaultdict(list)
            for image_id, labels in zip(rows.column("image_id").to_pylist(), rows.column("memberships").to_pylist()):
                target = tuple(wanted.get(image_id, ()))
                if target != tuple(labels or ()):
                    by_labels[target].append(image_id)
            for labels, changed in by_labels.items():
                if labels:
                    store.table(table).update(where=in_list("image_id", changed), values={"memberships": list(labels)})
                else:
                    store.delete(table, in_list("image_id", changed))
                touched += len(changed)
    return touched


def memberships_of(store: Store, image_ids: list[str]) -> dict[str, list[str]]:
    """image id -> sorted "dataset:split" labels of the listings that are not removed."""
    labels: dict[str, set[str]] = defaultdict(set)
    if not store.has(IMAGES):
        return {}
    for ids in chunks(sorted(set(image_ids))):
        rows = store.read(IMAGES, columns=["image_id", "dataset", "split"], where=f"{in_list('image_id', ids)} AND {ACTIVE}")
        for image_id, dataset, split in zip(*(rows.column(c).to_pylist() for c in ("image_id", "dataset", "split"))):
            labels[image_id].add(membership_label(dataset, split))
    return {image_id: sorted(found) for image_id, found in labels.items()}
