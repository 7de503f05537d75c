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
    scan = scan_source(source=source, dataset=dataset, staging_dir=str(settings.staging_dir),
                       store_uri=settings.store_uri, shard_size=settings.shard_size, manifest=manifest,
                       dry_run=dry_run, source_format=source_format, annotations=annotations, questions=questions)
    counts = {key: scan[key] for key in ("added", "changed", "reannotated", "removed", "unchanged")}
    bad_rows = list(scan["bad_rows"])
    if not dry_run:
        written = write_shard.map(content_path=unmapped(scan["content_path"]), shard=scan["shards"],
                                  parquet_dir=unmapped(str(settings.parquet_dir)),
                                  max_pixels=unmapped(settings.max_image_pixels)).result()
        load_shard.map(store_uri=unmapped(settings.store_uri),
                       shard_path=[w["path"] for w in written if w["path"]]).result()
        bad_rows += [bad for w in written for bad in w["bad_rows"]]
        if scan["plan_path"]:
            applied = apply_plan(store_uri=settings.store_uri, plan_path=scan["plan_path"], keep_removed=keep_removed)
            counts.update({key: applied[key] for key in ("added", "changed", "reannotated", "removed")})
    for bad in bad_rows:
        logger.warning("skipped %s: %s", bad["ref"], bad["reason"])
    logger.info("%s: %d images with %d captions; %s%s", dataset, scan["images_seen"], scan["captions"],
                ", ".join(f"{v} {k}" for k, v in counts.items()), " (dry run)" if dry_run else "")
    return {"dataset": dataset, "images_seen": scan["images_seen"], "captions": scan["captions"], **counts,
            "new_images": scan["new_content"], "dry_run": dry_run,
            "bad_rows": [{"ref": b["ref"], "reason": b["reason"]} for b in bad_rows]}
