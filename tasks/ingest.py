"""Ingest tasks: scan a source, write one Parquet shard, load one shard into the `images` and `qa` tables."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from ravlm_core import ingest
from ravlm_core.store import IMAGES, Store


@task(cache_policy=NO_CACHE)
def scan_source(source: str, dataset: str, staging_dir: str, store_uri: str, shard_size: int,
                manifest: str | None = None) -> dict:
    """Hash every image of the source and plan shards for those the store does not hold yet."""
    known = Store(store_uri).existing_ids(IMAGES, "image_id")
    result = ingest.scan_source(source, dataset, Path(staging_dir), known, shard_size,
                                Path(manifest) if manifest else None)
    return asdict(result)


@task(cache_policy=NO_CACHE, retries=1)
def write_shard(records_path: str, shard: str, dataset: str, parquet_dir: str) -> dict:
    return asdict(ingest.write_shard(records_path, shard, dataset, Path(parquet_dir)))


@task(cache_policy=NO_CACHE, retries=2)
def load_shard(store_uri: str, shard_path: str) -> dict:
    return asdict(ingest.load_shard(Store(store_uri), shard_path))
