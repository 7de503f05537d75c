"""Ingest flow: scan + diff a source → write new content shards (in parallel) → register them → apply the plan."""
from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from flows.common import RUN_HOOKS, run_name, settings_from
from tasks.ingest import apply_plan, load_shard, scan_source, write_shard


@flow(name="ingest", flow_run_name=run_name("ingest", "dataset"), **RUN_HOOKS)
def ingest_flow(source: str, dataset: str, manifest: str | None = None, dry_run: bool = False,
                keep_removed: bool = False, source_format: str = "auto", annotations: str | None = None,
                questions: str | None = None, overrides: dict | None = None) -> dict:
    """Make `dataset` say what `source` ("easy-vqa", a folder with an optional manifest, or a COCO-captions or
    VQAv2 folder with `source_format`) says now: added, changed, re-annotated and removed listings; new bytes are
    stored and decoded once. Reruns change nothing."""
    settings = settings_from(overrides)
    logger = get_run_logger()
    scan = scan_source(source, dataset, str(settings.staging_dir), settings.store_uri, settings.shard_size,
                       manifest, dry_run, source_format, annotations, questions)
    counts = {key: scan[key] for key in ("added", "changed", "reannotated", "removed", "unchanged")}
    bad_rows = list(scan["bad_rows"])
    if not dry_run:
        written = write_shard.map(unmapped(scan["content_path"]), scan["shards"], unmapped(str(settings.parquet_dir)),
                                  unmapped(settings.max_image_pixels)).result()
        load_shard.map(unmapped(settings.store_uri), [w["path"] for w in written if w["path"]]).result()
        bad_rows += [bad for w in written for bad in w["bad_rows"]]
        if scan["plan_path"]:
            applied = apply_plan(settings.store_uri, scan["plan_path"], keep_removed)
            counts.update({key: applied[key] for key in ("added", "changed", "reannotated", "removed")})
    for bad in bad_rows:
        logger.warning("skipped %s: %s", bad["ref"], bad["reason"])
    logger.info("%s: %s%s", dataset, ", ".join(f"{v} {k}" for k, v in counts.items()), " (dry run)" if dry_run else "")
    return {"dataset": dataset, "images_seen": scan["images_seen"], **counts, "new_images": scan["new_content"],
            "dry_run": dry_run, "bad_rows": [{"ref": b["ref"], "reason": b["reason"]} for b in bad_rows]}
