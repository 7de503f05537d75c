"""Vector, full-text and scalar indexes so analysts can search and filter the store."""
from __future__ import annotations

import logging

from ravlm_core.index import ann
from ravlm_core.schemas import CONTENTS, IMAGES, QA, image_vectors_table, question_vectors_table, text_vectors_table
from ravlm_core.store import Store

log = logging.getLogger(__name__)

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


def build_indexes(store: Store, model_tag: str, question_tag: str | None, min_rows_for_ann: int,
                  target_recall: float) -> dict[str, list[str]]:
    """Create the missing indexes of every table and fold appended rows into existing ones.

    Idempotent and incremental: an index that exists is kept and the rows appended since are added to it
    (LanceDB leaves appended rows unindexed until then). A vector table past `min_rows_for_ann` rows gets an ANN
    index kept by `ann.ensure_vector_index` (delta indexes for appends, retrained only after large growth) and
    gated at `target_recall` (an error when unreachable); both come from Settings (`min_rows_for_ann`,
    `ann_target_recall`). Returns the indexed columns per table.
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
        optimize_other_indexes(table)
        if "vector" in table.schema.names:
            ann.ensure_vector_index(store, name, min_rows=min_rows_for_ann, target_recall=target_recall)
        table = store.table(name)
        built[name] = sorted({c for index in table.list_indices() for c in index.columns})
        log.info("indexed %s: %s", name, ", ".join(built[name]))
    return built


def optimize_other_indexes(table) -> None:
    """Add appended rows to the full-text and scalar indexes. Not `table.optimize()`: that would also merge the
    vector index's deltas into a rewritten whole (see `ann.append_delta`)."""
    names = [index.name for index in table.list_indices() if list(index.columns) != [ann.COLUMN]]
    if names and any(table.index_stats(n).num_unindexed_rows for n in names):
        table.to_lance().optimize.optimize_indices(index_names=names)


def compact(store: Store, keep_versions_days: float) -> dict[str, dict[str, int]]:
    """Compact small fragments and drop table versions older than `keep_versions_days` in every table, so a store
    that has run a year of nightlies is not a year of versions deep. Time travel stays possible within the
    window; a table with nothing to compact gets no new version."""
    from datetime import timedelta

    out = {}
    for name in sorted(store.db.list_tables().tables):
        # Under the table's write lock: two runs compacting the same table at once (a scheduled nightly and an
        # operator's) made Lance refuse the second rewrite ("Retryable commit conflict"), failing that run.
        with store.write_lock(name):
            table = store.table(name)
            before = len(table.list_versions())
            # Compaction and pruning only, then the non-vector indexes: `table.optimize()` would also merge the
            # vector index's delta segments into a rewritten whole every night (ann.ensure_vector_index merges
            # deltas itself).
            dataset = table.to_lance()
            dataset.optimize.compact_files()
            dataset.cleanup_old_versions(older_than=timedelta(days=keep_versions_days))
            table = store.table(name)
            optimize_other_indexes(table)
            out[name] = {"versions_before": before, "versions_after": len(table.list_versions())}
    removed = sum(v["versions_before"] - v["versions_after"] for v in out.values())
    log.info("compacted %d tables, %d old versions removed (keeping %.1f days)", len(out), removed,
             keep_versions_days)
    return out
