"""Index tasks: build the store's vector, full-text and scalar indexes; compact its tables."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from ravlm_core.errors import naming
from ravlm_core.index import indexes
from ravlm_core.store import Store


@task(cache_policy=NO_CACHE)
def build_indexes(store_uri: str, model_tag: str, question_tag: str, min_rows_for_ann: int,
                  target_recall: float) -> dict:
    with naming(f"indexing the tables of {model_tag}"):
        return indexes.build_indexes(Store(store_uri), model_tag, question_tag, min_rows_for_ann, target_recall)


@task(cache_policy=NO_CACHE)
def compact_store(store_uri: str, keep_versions_days: float) -> dict:
    """Compact every table and drop its versions older than the retention window; returns versions removed."""
    with naming("compacting the store"):
        stats = indexes.compact(Store(store_uri), keep_versions_days)
    return {"tables": len(stats), "versions_removed": sum(v["versions_before"] - v["versions_after"]
                                                          for v in stats.values())}
