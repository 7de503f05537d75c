"""Content shards: the bytes of new images written once into Parquet (decoded, checked, thumbnailed), registered
in `contents`, and the list of shards embedding reads."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ravlm_core.ids import content_id
from ravlm_core.imaging import ImageRejected, decode_image, signature, thumbnail_jpeg
from ravlm_core.ingest.records import FIX_FILE, BadRow
from ravlm_core.locations import join, list_files, remove, write_parquet_atomically
from ravlm_core.schemas import CONTENTS, CONTENTS_SCHEMA, SHARD_SCHEMA
from ravlm_core.store import Store

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 128

# Rows per Parquet row group while writing a shard: bounds memory to this many images' bytes.
WRITE_BATCH_ROWS = 64

CONTENT_DIR = "content"


@dataclass
class ShardResult:
    path: str
    n_images: int
    bad_rows: list[BadRow]


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
    if content_id(data) != row["image_id"]:
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


def stored_shards(store: Store) -> list[str]:
    """The shards the `contents` table says hold the store's image bytes: what embedding reads. A file the
    store no longer points to (a damaged shard whose bytes were written again) is never read."""
    if not store.has(CONTENTS):
        return []
    return sorted(set(store.read(CONTENTS, columns=["shard"]).column("shard").to_pylist()))


def content_shards(parquet_dir: Path | str) -> list[str]:
    """Sorted paths of every content shard (never a half-written one)."""
    return list_files(join(parquet_dir, CONTENT_DIR), ".parquet")
