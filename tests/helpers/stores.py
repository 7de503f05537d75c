"""A store filled the way the ingest flow fills it, in one process, and a shard damaged on purpose."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ravlm_core.config import Settings
from ravlm_core.ingest.membership import ApplyResult, apply_plan
from ravlm_core.ingest.records import BadRow
from ravlm_core.ingest.scan import ScanResult, scan_source
from ravlm_core.ingest.shards import load_shard, write_shard
from ravlm_core.locations import join
from ravlm_core.store import Store

# The flow's defaults: Settings' own, never the environment's or a ravlm.toml's.
SHARD_SIZE = Settings.model_fields["shard_size"].default
MAX_PIXELS = Settings.model_fields["max_image_pixels"].default


@dataclass
class IngestSummary:
    """What one ingest did, counted like the flow's result."""

    dataset: str
    images_seen: int
    captions: int
    added: int
    changed: int
    reannotated: int
    removed: int
    unchanged: int
    new_content: int
    bad_rows: list[BadRow]
    dry_run: bool = False


def ingest_folder(source: str | Path, dataset: str, store: Store, data_dir: Path | str, *,
                  manifest: Path | None = None, shard_size: int = SHARD_SIZE, dry_run: bool = False,
                  keep_removed: bool = False, max_pixels: int = MAX_PIXELS, source_format: str = "auto",
                  annotations: Path | None = None, questions: Path | None = None) -> IngestSummary:
    """The ingest flow's steps in order, without Prefect: scan the source, write and register each planned shard,
    apply the membership plan."""
    scan = scan_source(str(source), dataset, join(data_dir, "staging"), store, shard_size, manifest, dry_run,
                       source_format, annotations, questions)
    bad = list(scan.bad_rows)
    if dry_run:
        return _summarize(scan, None, bad, dry_run=True)
    for shard in scan.shards:
        written = write_shard(scan.content_path, shard, join(data_dir, "parquet"), max_pixels)
        bad += written.bad_rows
        if written.path:
            load_shard(store, written.path)
    applied = apply_plan(store, scan.plan_path, keep_removed) if scan.plan_path else None
    return _summarize(scan, applied, bad)


def _summarize(scan: ScanResult, applied: ApplyResult | None, bad_rows: list[BadRow],
               dry_run: bool = False) -> IngestSummary:
    """The applied counts when a plan was applied, else what the scan found."""
    counts = applied or scan
    return IngestSummary(scan.dataset, scan.images_seen, scan.captions, counts.added, counts.changed,
                         counts.reannotated, counts.removed, scan.unchanged, scan.new_content, bad_rows, dry_run)


def damage_an_image(shard: str) -> None:
    """A readable shard whose first image's bytes are no longer an image (bit rot, a bad copy)."""
    table = pq.read_table(shard)
    blobs = table.column("image").to_pylist()
    blobs[0] = b"\x89PNG but not any more"
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", pa.array(blobs, pa.binary())),
                   shard)
