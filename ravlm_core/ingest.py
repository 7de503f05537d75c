"""Ingest: source → de-duplicated staging records → validated Parquet shards → LanceDB `images` and `qa` tables."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ravlm_core.sources import BadRow, QAPair, SourceRecord, open_source
from ravlm_core.store import IMAGES, IMAGES_SCHEMA, QA, QA_SCHEMA, Store

log = logging.getLogger(__name__)

QA_TYPE = pa.list_(pa.struct([("question", pa.string()), ("answer", pa.string()), ("question_type", pa.string())]))
STAGING_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("path", pa.string()), ("ref", pa.string()), ("split", pa.string()),
     ("caption", pa.string()), ("qa", QA_TYPE), ("shard", pa.string())]
)
SHARD_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("dataset", pa.string()), ("split", pa.string()), ("uri", pa.string()),
     ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()), ("caption", pa.string()),
     ("image", pa.binary()), ("thumbnail", pa.binary()), ("qa", QA_TYPE)]
)
THUMBNAIL_SIDE = 128
# Rows per Parquet row group while writing a shard: bounds memory to this many images' bytes.
WRITE_BATCH_ROWS = 64
# Dataset names become folder names; keep them to one safe path component.
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
FIX_FILE = "fix or remove the file and rerun"


@dataclass
class ScanResult:
    records_path: str  # "" when there is nothing new to stage
    shards: list[str]
    n_images: int  # distinct images (by content) whose files could be read
    n_new: int  # of which the store does not hold yet
    n_qa: int  # QA pairs of the new images
    bad_rows: list[BadRow]


@dataclass
class ShardResult:
    path: str
    n_images: int
    n_qa: int
    bad_rows: list[BadRow]


@dataclass
class LoadResult:
    shard: str
    new_images: int
    new_qa: int


def image_id_of(path: Path) -> str:
    """Content hash of a file: identical bytes under any name give the same id."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def scan_source(
    source: str, dataset: str, staging_dir: Path, known_ids: set[str], shard_size: int, manifest: Path | None = None
) -> ScanResult:
    """Hash and de-duplicate a source's images and plan content-named shards for the ones not in `known_ids`.

    Args:
        source: "easy-vqa" or a folder (see `sources.open_source`).
        dataset: the dataset name (one path component: letters, digits, `_ . -`).
        staging_dir: where `<dataset>/records-<hash>.parquet` is written (paths and QA, no image bytes).
        known_ids: image ids already ingested; they are skipped, so a rerun plans nothing.
        shard_size: most images per shard (shards never mix splits).
        manifest: an explicit manifest for a folder source.
    Returns:
        The staging file, the new shard names and counts; unreadable files are in `bad_rows`.
    Raises:
        ValueError: bad dataset name or shard size; `open_source`'s errors for unusable sources.
    """
    if not DATASET_NAME.fullmatch(dataset):
        raise ValueError(f"dataset name {dataset!r} must be letters, digits, '_', '.' or '-' (not starting with . _ -)")
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    records, bad_rows = open_source(source, manifest)
    unique, unreadable = _hash_and_merge(records)
    new = {image_id: record for image_id, record in unique.items() if image_id not in known_ids}
    shard_of = _assign_shards(new, shard_size)
    records_path = _write_staging(new, shard_of, staging_dir / dataset) if new else ""
    result = ScanResult(
        records_path, sorted(set(shard_of.values())), len(unique), len(new),
        sum(len(record.qa) for record in new.values()), bad_rows + unreadable,
    )
    log.info("%s: %d images, %d new in %d shards, %d bad rows", dataset, result.n_images, result.n_new,
             len(result.shards), len(result.bad_rows))
    return result


def _hash_and_merge(records: list[SourceRecord]) -> tuple[dict[str, SourceRecord], list[BadRow]]:
    """Records keyed by image id; the same bytes listed twice become one record with the QA pairs of both."""
    unique: dict[str, SourceRecord] = {}
    bad: list[BadRow] = []
    for record in records:
        try:
            image_id = image_id_of(record.path)
        except OSError as err:
            bad.append(BadRow(record.ref, f"cannot read {record.path} ({err.strerror or err}): {FIX_FILE}"))
            continue
        kept = unique.setdefault(image_id, SourceRecord(record.ref, record.path, record.split, None, []))
        if kept.split != record.split:
            log.warning("%s and %s are the same image in splits %s and %s: keeping it in %s",
                        kept.ref, record.ref, kept.split, record.split, kept.split)
        kept.caption = kept.caption or record.caption
        kept.qa = _distinct_qa(kept.qa + record.qa)
    log.info("%d records, %d distinct images", len(records) - len(bad), len(unique))
    return unique, bad


def _distinct_qa(pairs: list[QAPair]) -> list[QAPair]:
    """First pair per (question, answer): the `qa` table's key, so a second one could only overwrite it."""
    first: dict[tuple[str, str], QAPair] = {}
    for pair in pairs:
        first.setdefault((pair.question, pair.answer), pair)
    return list(first.values())


def _assign_shards(records: dict[str, SourceRecord], shard_size: int) -> dict[str, str]:
    """image id -> shard name. Ids are sorted before chunking, so the names depend only on the set of new ids,
    and removing whole loaded shards (a rerun after a crash) leaves the other shards' names unchanged."""
    by_split: dict[str, list[str]] = {}
    for image_id, record in records.items():
        by_split.setdefault(record.split, []).append(image_id)
    shard_of = {}
    for split, ids in by_split.items():
        ids.sort()
        for start in range(0, len(ids), shard_size):
            chunk = ids[start : start + shard_size]
            digest = hashlib.blake2b("\n".join(chunk).encode()).hexdigest()[:12]
            shard_of.update(dict.fromkeys(chunk, f"{split}-{digest}"))
    return shard_of


def _write_staging(records: dict[str, SourceRecord], shard_of: dict[str, str], folder: Path) -> str:
    ids = sorted(records, key=lambda image_id: (shard_of[image_id], image_id))
    rows = [
        {"image_id": image_id, "path": str(records[image_id].path), "ref": records[image_id].ref,
         "split": records[image_id].split, "caption": records[image_id].caption,
         "qa": [vars(pair) for pair in records[image_id].qa], "shard": shard_of[image_id]}
        for image_id in ids
    ]
    digest = hashlib.blake2b("\n".join(sorted(set(shard_of.values()))).encode()).hexdigest()[:12]
    path = folder / f"records-{digest}.parquet"
    _write_parquet_atomically(path, STAGING_SCHEMA, [pa.Table.from_pylist(rows, STAGING_SCHEMA)])
    return str(path)


def write_shard(records_path: str, shard: str, dataset: str, parquet_dir: Path) -> ShardResult:
    """Validate and encode one shard's images into `parquet_dir/<dataset>/<shard>.parquet` (atomically).

    Args:
        records_path: the staging file from `scan_source`.
        shard: one of its shard names.
        dataset: the dataset name.
        parquet_dir: root of the Parquet shards.
    Returns:
        The shard path and counts; images that fail validation are left out and listed in `bad_rows`. When none
        is left, no shard is written and the path is "".
    Raises:
        ValueError: `shard` has no rows in `records_path`.
    """
    rows = pq.read_table(records_path, filters=[("shard", "==", shard)]).to_pylist()
    if not rows:
        raise ValueError(f"shard {shard!r} has no rows in {records_path}: rerun the scan")
    path = parquet_dir / dataset / f"{shard}.parquet"
    bad: list[BadRow] = []
    counts = {"images": 0, "qa": 0}

    def batches():
        # Generator so only one batch of image bytes is in memory at a time.
        for start in range(0, len(rows), WRITE_BATCH_ROWS):
            good = []
            for row in rows[start : start + WRITE_BATCH_ROWS]:
                result = _shard_row(row, dataset)
                if isinstance(result, BadRow):
                    bad.append(result)
                else:
                    good.append(result)
                    counts["images"] += 1
                    counts["qa"] += len(result["qa"])
            yield pa.Table.from_pylist(good, SHARD_SCHEMA)

    _write_parquet_atomically(path, SHARD_SCHEMA, batches())
    log.info("%s: %d images, %d QA, %d bad", path, counts["images"], counts["qa"], len(bad))
    if not counts["images"]:
        # Every image of the shard failed validation: no empty shard for later stages to trip over.
        path.unlink()
        return ShardResult("", 0, 0, bad)
    return ShardResult(str(path), counts["images"], counts["qa"], bad)


def _shard_row(row: dict, dataset: str) -> dict | BadRow:
    """One staged record as a shard row with its bytes, size and thumbnail, or why the image is unusable."""
    path, ref = Path(row["path"]), row["ref"]
    try:
        data = path.read_bytes()
    except OSError as err:
        return BadRow(ref, f"cannot read {path} ({err.strerror or err}): {FIX_FILE}")
    if not data:
        return BadRow(ref, f"{path} is empty (0 bytes): {FIX_FILE}")
    if hashlib.blake2b(data, digest_size=16).hexdigest() != row["image_id"]:
        return BadRow(ref, f"{path} changed after it was scanned: rerun the ingest")
    from PIL import UnidentifiedImageError

    try:
        width, height, image_format, thumbnail = _decode(data)
    except UnidentifiedImageError:
        return BadRow(ref, f"{path} is not an image format PIL can read: {FIX_FILE}")
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, struct.error ... for broken files
        return BadRow(ref, f"{path} is a damaged image ({type(err).__name__}: {err}): {FIX_FILE}")
    if width == 0 or height == 0:
        return BadRow(ref, f"{path} has zero size ({width}x{height}): {FIX_FILE}")
    return {
        "image_id": row["image_id"], "dataset": dataset, "split": row["split"], "uri": str(path),
        "width": width, "height": height, "format": image_format, "caption": row["caption"],
        "image": data, "thumbnail": thumbnail, "qa": row["qa"],
    }


def _decode(data: bytes) -> tuple[int, int, str, bytes]:
    """(width, height, format, JPEG thumbnail); raises if PIL cannot fully decode the bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # structure and checksums, without decoding pixels
    with Image.open(io.BytesIO(data)) as image:
        width, height, image_format = image.width, image.height, image.format
        image.load()  # full decode: catches truncated pixel data that verify() lets through
        thumbnail = image.convert("RGB")
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    thumbnail.save(buffer, format="JPEG", quality=85)
    return width, height, image_format, buffer.getvalue()


def _write_parquet_atomically(path: Path, schema: pa.Schema, tables) -> None:
    """Write `tables` as row groups of one file that appears under `path` only once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not "*.parquet": a half-written file must never be listed as a shard.
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for table in tables:
                if table.num_rows:
                    writer.write_table(table)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load_shard(store: Store, shard_path: str) -> LoadResult:
    """Upsert one shard's rows (without the image bytes) into `images` and its QA pairs into `qa`.

    Returns:
        How many rows were new; loading a shard twice adds nothing the second time.
    """
    table = pq.read_table(shard_path, columns=[name for name in SHARD_SCHEMA.names if name != "image"])
    images = _images_rows(table, shard_path)
    qa = _qa_rows(table)
    result = LoadResult(shard_path, store.upsert(IMAGES, images, "image_id"), store.upsert(QA, qa, "qa_id"))
    log.info("%s: %d new images, %d new QA", shard_path, result.new_images, result.new_qa)
    return result


def _images_rows(table: pa.Table, shard_path: str) -> pa.Table:
    n = table.num_rows
    columns = {name: table.column(name) for name in IMAGES_SCHEMA.names if name in table.column_names}
    columns["shard"] = pa.array([shard_path] * n, pa.string())
    columns["ingested_at"] = pa.array([datetime.now(timezone.utc)] * n, IMAGES_SCHEMA.field("ingested_at").type)
    return pa.table([columns[name] for name in IMAGES_SCHEMA.names], schema=IMAGES_SCHEMA)


def qa_id_of(image_id: str, question: str, answer: str) -> str:
    """Key of one QA pair: the same question and answer on the same image is one row however often loaded."""
    key = "\x1f".join((image_id, question, answer))
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).hexdigest()


def _qa_rows(table: pa.Table) -> pa.Table:
    rows = {}
    columns = (table.column(name).to_pylist() for name in ("image_id", "dataset", "split", "qa"))
    for image_id, dataset, split, pairs in zip(*columns):
        for pair in pairs or []:
            qa_id = qa_id_of(image_id, pair["question"], pair["answer"])
            rows.setdefault(qa_id, {"qa_id": qa_id, "image_id": image_id, "dataset": dataset, "split": split, **pair})
    return pa.Table.from_pylist(list(rows.values()), QA_SCHEMA)


def shard_paths(parquet_dir: Path, dataset: str) -> list[str]:
    """Sorted paths of a dataset's existing shard files (never a half-written one)."""
    folder = parquet_dir / dataset
    return sorted(str(path) for path in folder.glob("*.parquet")) if folder.is_dir() else []
