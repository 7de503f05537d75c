"""The vector index and its quality gate: settings reaching the target are chosen, stored, shown and used; an
unreachable target fails; appends become delta indexes without retraining; reruns do nothing."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from ravlm_core.errors import UserError
from ravlm_core.index import ann
from ravlm_core.index.indexes import build_indexes, compact
from ravlm_core.query.status import vector_indexes
from ravlm_core.retrieval import search as retrieve
from ravlm_core.schemas import MEMBERSHIPS, image_vectors_table, vector_schema

TAG = "m"
TABLE = image_vectors_table(TAG)
DIM = 32
ROWS = 3000
MIN_ROWS = 2000
TARGET = 0.9


class Clusters:
    """Unit vectors around 50 fixed centres: enough structure for an IVF index, noisy enough to need probing."""

    def __init__(self, seed: int = 0):
        self.centres = np.random.default_rng(seed).standard_normal((50, DIM)).astype(np.float32)

    def draw(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = self.centres[rng.integers(0, len(self.centres), n)] + 0.7 * rng.standard_normal((n, DIM)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def add_rows(store, vectors: np.ndarray, first: int) -> None:
    ids = [f"img{first + i:06d}" for i in range(len(vectors))]
    rows = pa.Table.from_pydict(
        {"image_id": ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
         "memberships": [["d:train"]] * len(ids), "model_tag": [TAG] * len(ids),
         "embedded_at": [datetime.now(timezone.utc)] * len(ids)},
        schema=vector_schema(DIM, "image_id", MEMBERSHIPS))
    store.upsert(TABLE, rows, "image_id")


@pytest.fixture
def indexed(store):
    clusters = Clusters()
    stored = clusters.draw(ROWS, seed=1)
    add_rows(store, stored, 0)
    build_indexes(store, TAG, None, min_rows_for_ann=MIN_ROWS, target_recall=TARGET)
    return store, clusters, stored


def test_gate_stores_settings_reaching_the_target_and_status_shows_them(indexed):
    store, _, _ = indexed
    record = ann.read_quality(store)[TABLE]
    assert record.recall_at_10 >= TARGET and record.target_recall == TARGET
    assert record.nprobes >= 1 and record.refine_factor in ann.REFINE_LADDER
    assert record.rows_indexed == ROWS and record.action == "built"
    shown = vector_indexes(store)[TABLE]
    assert shown["index_type"] == "IVF_SQ" and shown["rows_unindexed"] == 0
    assert (shown["recall_at_10"], shown["nprobes"], shown["refine_factor"]) == (
        record.recall_at_10, record.nprobes, record.refine_factor)


def test_search_uses_the_gated_settings_and_reaches_the_target_on_new_queries(indexed):
    store, clusters, stored = indexed
    queries = clusters.draw(200, seed=7)  # not stored rows
    table = store.table(TABLE)
    assert ann.search_settings(store, TABLE, table.version) == (
        ann.read_quality(store)[TABLE].nprobes, ann.read_quality(store)[TABLE].refine_factor)
    found = retrieve.search(store, TABLE, queries, 10)
    exact = np.argsort(-(queries @ stored.T), axis=1)[:, :10]
    recall = np.mean([len({int(i[3:]) for i in got} & set(want)) / 10 for got, want in zip(found.ids, exact)])
    # The gate measured on 300 stored vectors; new draws of the same clusters behave alike, within sampling noise.
    assert recall >= TARGET - 0.03


def test_an_unreachable_target_fails_naming_the_table_and_the_best_recall(store):
    add_rows(store, Clusters().draw(ROWS, seed=1), 0)
    with pytest.raises(UserError, match=rf"{TABLE} reaches recall@10 [01]\.\d+ at best .*ann_target_recall 1.01"):
        build_indexes(store, TAG, None, min_rows_for_ann=MIN_ROWS, target_recall=1.01)


def test_appends_become_a_searchable_delta_without_retraining_and_reruns_do_nothing(indexed):
    store, clusters, _ = indexed
    base = ann.read_quality(store)[TABLE].index_uuid
    version = store.table(TABLE).version
    build_indexes(store, TAG, None, min_rows_for_ann=MIN_ROWS, target_recall=TARGET)
    assert store.table(TABLE).version == version, "a rerun with nothing new must not touch the index"

    appended = clusters.draw(400, seed=3)
    add_rows(store, appended, ROWS)
    assert vector_indexes(store)[TABLE]["rows_unindexed"] == 400
    build_indexes(store, TAG, None, min_rows_for_ann=MIN_ROWS, target_recall=TARGET)
    record = ann.read_quality(store)[TABLE]
    assert record.action == "appended" and record.rows_indexed == ROWS + 400
    assert record.index_uuid.split(",")[0] == base, "the trained base index must be kept, not rebuilt"
    assert record.trained_rows == ROWS and record.recall_at_10 >= TARGET
    shown = vector_indexes(store)[TABLE]
    assert shown["rows_unindexed"] == 0 and shown["segments"] == 2
    hits = retrieve.search(store, TABLE, appended[:20], 1)
    assert [h[0] for h in hits.ids] == [f"img{ROWS + i:06d}" for i in range(20)]


def test_growth_past_the_retrain_factor_retrains(indexed):
    store, clusters, _ = indexed
    base = ann.read_quality(store)[TABLE].index_uuid
    add_rows(store, clusters.draw(int(ROWS * (ann.RETRAIN_GROWTH - 1)), seed=4), ROWS)
    build_indexes(store, TAG, None, min_rows_for_ann=MIN_ROWS, target_recall=TARGET)
    record = ann.read_quality(store)[TABLE]
    assert record.action == "built" and record.trained_rows == int(ROWS * ann.RETRAIN_GROWTH)
    assert base not in record.index_uuid.split(",")


def test_a_small_table_gets_no_vector_index_and_exact_search(store):
    add_rows(store, Clusters().draw(500, seed=1), 0)
    build_indexes(store, TAG, None, min_rows_for_ann=MIN_ROWS, target_recall=TARGET)
    assert ann.vector_index(store.table(TABLE)) is None and TABLE not in ann.read_quality(store)


def test_compaction_keeps_every_row_indexed_and_the_gate_figure_valid(indexed):
    store, clusters, _ = indexed
    for part in range(3):  # several small appends: fragments worth compacting
        add_rows(store, clusters.draw(100, seed=20 + part), ROWS + 100 * part)
    build_indexes(store, TAG, None, min_rows_for_ann=MIN_ROWS, target_recall=TARGET)
    compact(store, keep_versions_days=0)
    shown = vector_indexes(store)[TABLE]
    assert shown["rows_indexed"] == ROWS + 300 and shown["rows_unindexed"] == 0
    table = store.table(TABLE)
    assert ann.measure_recall(table, *ann.exact_neighbours(table, 100), shown["nprobes"],
                              shown["refine_factor"]) >= TARGET - 0.03


def test_deltas_past_the_limit_are_merged_with_each_other_not_with_the_base(indexed, monkeypatch):
    store, clusters, _ = indexed
    monkeypatch.setattr(ann, "MAX_DELTAS", 1)
    base = ann.read_quality(store)[TABLE].index_uuid
    for part in range(2):
        add_rows(store, clusters.draw(200, seed=30 + part), ROWS + 200 * part)
        build_indexes(store, TAG, None, min_rows_for_ann=MIN_ROWS, target_recall=TARGET)
    record = ann.read_quality(store)[TABLE]
    segments = record.index_uuid.split(",")
    assert segments[0] == base and len(segments) == 2, "two deltas merged into one beside the untouched base"
    assert record.rows_indexed == ROWS + 400 and vector_indexes(store)[TABLE]["rows_unindexed"] == 0


def test_a_selective_filter_is_searched_exactly_in_memory_and_sees_appends(indexed, monkeypatch):
    store, clusters, stored = indexed
    queries = clusters.draw(20, seed=9)
    where = "image_id < 'img000300'"  # 300 of 3,000 rows: under FLAT_MAX_ROWS
    found = retrieve.search(store, TABLE, queries, 10, where=where)
    sims = queries @ stored[:300].T
    exact = np.argsort(-sims, axis=1)[:, :10]
    assert [[int(i[3:]) for i in got] for got in found.ids] == exact.tolist()  # every neighbour, in order
    np.testing.assert_allclose(found.scores, np.take_along_axis(sims, exact, axis=1), atol=1e-5)

    add_rows(store, queries[:1], 0)  # replaces img000000 with the first query itself: a new table version
    assert retrieve.search(store, TABLE, queries[:1], 1, where=where).ids == [["img000000"]]

    def no_exact_search(*args):
        raise AssertionError("a filter passing more than FLAT_MAX_ROWS rows went to the in-memory search")

    monkeypatch.setattr(retrieve, "FLAT_MAX_ROWS", 100)
    monkeypatch.setattr(retrieve, "_exact_hits", no_exact_search)
    assert len(retrieve.search(store, TABLE, queries, 10, where="image_id < 'img000200'").ids[0]) == 10


def test_a_filter_passing_no_rows_finds_nothing(indexed):
    store, clusters, _ = indexed
    assert retrieve.search(store, TABLE, clusters.draw(2, seed=3), 5, where="image_id = 'none'").ids == [[], []]


def test_two_runs_compacting_one_store_at_once_both_finish_and_keep_every_row(store):
    """A scheduled nightly and an operator's run both compact at the end; each table's write lock orders them."""
    from concurrent.futures import ThreadPoolExecutor

    for start in range(0, 60, 10):  # six commits: six small fragments to rewrite
        store.upsert("t", pa.table({"id": [f"r{i}" for i in range(start, start + 10)], "n": list(range(10))}), "id")
    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(compact, store, 7.0) for _ in range(4)]
        assert all(run.result()["t"]["versions_before"] >= 1 for run in runs)  # .result() re-raises a failed run
    assert store.count("t") == 60
