"""Vector, full-text and scalar indexes so analysts can search and filter the store."""
from __future__ import annotations

import logging

from ravlm_core.store import CONTENTS, IMAGES, QA, Store, image_vectors_table, question_vectors_table, text_vectors_table

log = logging.getLogger(__name__)

# Below this many rows an exact scan is fast and exact; an ANN index only costs recall.
MIN_ROWS_FOR_ANN = 10_000

# table -> (full-text columns, {index kind: scalar columns}); BITMAP for low-cardinality filters, BTREE for ids,
# LABEL_LIST for the "dataset:split" lists that knowledge-base prefilters test with array_has_any.
SCALAR_PLAN = {
    IMAGES: (["caption"], {"BITMAP": ["dataset", "split"], "BTREE": ["image_id", "member_id"]}),
    QA: (["question"], {"BITMAP": ["dataset", "split", "answer", "question_type"],
                        "BTREE": ["image_id", "member_id", "qa_id"]}),
    CONTENTS: ([], {"BTREE": ["image_id"]}),
}


def _plan(model_tag: str, question_tag: str | None) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    plan = {
        **SCALAR_PLAN,
        image_vectors_table(model_tag): ([], {"LABEL_LIST": ["memberships"], "BTREE": ["image_id"]}),
        text_vectors_table(model_tag): (["text"], {"BTREE": ["text_id"]}),
    }
    if question_tag:
        plan[question_vectors_table(question_tag)] = (["text"], {"BTREE": ["text_id"]})
    return plan


def build_indexes(store: Store, model_tag: str, question_tag: str | None = None,
                  min_rows_for_ann: int = MIN_ROWS_FOR_ANN) -> dict[str, list[str]]:
    """Create the missing indexes of every table and fold appended rows into existing ones.

    Idempotent and incremental: an index that exists is kept and `optimize()` adds the rows appended since
    (LanceDB leaves appended rows unindexed until then), so the nightly run does not rebuild from scratch.
    Returns the indexed columns per table.
    """
    built: dict[str, list[str]] = {}
    for name, (fts, scalar) in _plan(model_tag, question_tag).items():
        if not store.has(name) or store.count(name) == 0:
            continue
        table = store.table(name)
        existing = {tuple(index.columns) for index in table.list_indices()}
        for column in fts:
            if (column,) not in existing:
                table.create_fts_index(column, replace=True)
        for kind, columns in scalar.items():
            for column in columns:
                if (column,) not in existing:
                    table.create_scalar_index(column, index_type=kind, replace=True)
        if "vector" in table.schema.names:
            rows = table.count_rows()
            if ("vector",) not in existing and rows >= min_rows_for_ann:
                # IVF_HNSW_SQ: good recall without PQ's refine step; partitions ~ sqrt(rows).
                table.create_index(metric="cosine", index_type="IVF_HNSW_SQ",
                                   num_partitions=max(1, int(rows**0.5) // 4))
        table.optimize()
        built[name] = sorted({c for index in table.list_indices() for c in index.columns})
        log.info("indexed %s: %s", name, ", ".join(built[name]))
    return built


def compact(store: Store, keep_versions_days: float) -> dict[str, dict[str, int]]:
    """Compact small fragments and drop table versions older than `keep_versions_days` in every table, so a store
    that has run a year of nightlies is not a year of versions deep. Time travel stays possible within the
    window; a table with nothing to compact gets no new version."""
    from datetime import timedelta

    out = {}
    for name in sorted(store.db.list_tables().tables):
        table = store.table(name)
        before = len(table.list_versions())
        table.optimize(cleanup_older_than=timedelta(days=keep_versions_days))
        out[name] = {"versions_before": before, "versions_after": len(table.list_versions())}
    removed = sum(v["versions_before"] - v["versions_after"] for v in out.values())
    log.info("compacted %d tables, %d old versions removed (keeping %.1f days)", len(out), removed,
             keep_versions_days)
    return out
