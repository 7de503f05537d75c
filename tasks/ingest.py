"""Ingest tasks: scan and diff a source, write one content shard, register it, apply the membership plan."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from ravlm_core.errors import naming
from ravlm_core.ingest import membership, scan, shards
from ravlm_core.store import Store
from tasks.retry import RETRY


@task(cache_policy=NO_CACHE)
def scan_source(source: str, dataset: str, staging_dir: str, store_uri: str, shard_size: int,
                manifest: str | None = None, dry_run: bool = False, source_format: str = "auto",
                annotations: str | None = None, questions: str | None = None) -> dict:
    """Hash every image of the source and plan what changed since the store last saw it."""
    with naming(f"scanning {source}"):
        result = scan.scan_source(source, dataset, staging_dir, Store(store_uri), shard_size,
                                    Path(manifest) if manifest else None, dry_run, source_format,
                                    Path(annotations) if annotations else None, Path(questions) if questions else None)
    return asdict(result)


@task(cache_policy=NO_CACHE, **RETRY)
def write_shard(content_path: str, shard: str, parquet_dir: str, max_pixels: int) -> dict:
    with naming(f"writing shard {shard}"):
        return asdict(shards.write_shard(content_path, shard, parquet_dir, max_pixels))


@task(cache_policy=NO_CACHE, **RETRY)
def load_shard(store_uri: str, shard_path: str) -> int:
    with naming(f"registering shard {shard_path}"):
        return shards.load_shard(Store(store_uri), shard_path)


@task(cache_policy=NO_CACHE, **RETRY)
def apply_plan(store_uri: str, plan_path: str, keep_removed: bool) -> dict:
    """One task for the whole plan: membership writes never race each other."""
    with naming(f"applying the membership plan {plan_path}"):
        return asdict(membership.apply_plan(Store(store_uri), plan_path, keep_removed))
