"""Ingest flow: scan a source → write new Parquet shards (in parallel) → load them into `images` and `qa`."""
from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from flows.common import settings_from
from tasks.ingest import load_shard, scan_source, write_shard


@flow(name="ingest")
def ingest_flow(source: str, dataset: str, manifest: str | None = None, overrides: dict | None = None) -> dict:
    """Ingest `source` ("easy-vqa" or a folder with an optional manifest) as `dataset`; reruns add nothing."""
    settings = settings_from(overrides)
    logger = get_run_logger()
    scan = scan_source(source, dataset, str(settings.staging_dir), settings.store_uri, settings.shard_size, manifest)
    logger.info("%s: %d images (%d new) in %d new shards", dataset, scan["n_images"], scan["n_new"],
                len(scan["shards"]))
    written = write_shard.map(unmapped(scan["records_path"]), scan["shards"], unmapped(dataset),
                              unmapped(str(settings.parquet_dir))).result()
    shards = [w["path"] for w in written if w["path"]]
    loaded = load_shard.map(unmapped(settings.store_uri), shards).result()
    bad_rows = scan["bad_rows"] + [bad for w in written for bad in w["bad_rows"]]
    for bad in bad_rows:
        logger.warning("skipped %s: %s", bad["ref"], bad["reason"])
    return {
        "dataset": dataset,
        "images_seen": scan["n_images"],
        "new_images": sum(x["new_images"] for x in loaded),
        "new_qa": sum(x["new_qa"] for x in loaded),
        "shards": shards,
        "bad_rows": bad_rows,
    }
