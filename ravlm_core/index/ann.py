"""The approximate-nearest-neighbour index of a vector table and its quality gate.

An index is chosen by table size and built once; rows appended later are folded in as a *delta* index (assigned to
the trained partitions, nothing retrained, the base index kept as it is), and the index is retrained only when the
table has grown `RETRAIN_GROWTH` times since it was trained. After every change the gate measures recall@10
against exact search on a sample of stored vectors, picks the cheapest (nprobes, refine_factor) reaching the target
and records it in the `index_quality` table, which `retrieve.search` and `ravlm status` read. A target that no
setting reaches is an error naming the table: the flow fails instead of serving worse neighbours than promised.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from ravlm_core.errors import UserError
from ravlm_core.schemas import INDEX_QUALITY, QUALITY_SCHEMA
from ravlm_core.store import Store, sql_quote
from ravlm_core.vectors import unit_rows_np, vector_matrix

log = logging.getLogger(__name__)

COLUMN = "vector"
K = 10
# Stored vectors used as gate queries (each looks for its 10 nearest *other* rows): enough to tell 0.95 from 0.97.
GATE_QUERIES = 300
# Of those, how many are timed one by one to rank the settings that reach the target.
TIMED_QUERIES = 60
QUERY_BLOCK = 300
# Retrain (rebuild from scratch) once the table has grown this many times since the index was trained: appended
# rows are only assigned to the partitions trained on the old rows, which fits less well as the table drifts.
RETRAIN_GROWTH = 2.0
# Delta indexes are each probed at query time; past this many they are merged into one (the base stays as built).
MAX_DELTAS = 4
# The settings the gate tries. 0 refine = the quantised distances as they are; r > 0 re-ranks r*k candidates by
# their exact distance, which repairs quantisation error; nprobes repairs neighbours in unprobed partitions.
NPROBES_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
REFINE_LADDER = (0, 2, 5, 10, 20)
# A doubling of nprobes that gains less recall than this ends the search at that refine level.
PLATEAU = 0.002


@dataclass
class IndexPlan:
    """How to build the index of a table of `rows` rows."""

    index_type: str
    num_partitions: int

    def config(self):
        from lancedb.index import IvfSq

        return IvfSq(distance_type="cosine", num_partitions=self.num_partitions)


def plan_for(rows: int) -> IndexPlan:
    """IVF_SQ with about sqrt(rows) partitions (~1,000 rows each at 1M).

    Compared once on 100k x 384 clustered vectors, 316 partitions, 2 shared cores (notes of issue 9): IVF_SQ
    trained in 21 s, IVF_HNSW_SQ in 45 s, IVF_RQ in 53 s (IVF_PQ: 265 s at 79 partitions), all reaching recall@10
    >= 0.97 with refine at a few ms; 8-bit SQ keeps distances close enough that a small refine restores exact order.
    benchmarks/ann_bench.py measures the chosen index at any size."""
    return IndexPlan("IVF_SQ", int(min(4096, max(16, round(rows**0.5)))))


@dataclass
class Quality:
    table_name: str
    index_type: str
    num_partitions: int
    nprobes: int
    refine_factor: int
    recall_at_10: float
    target_recall: float
    p50_ms: float
    queries: int
    rows_indexed: int
    trained_rows: int
    index_uuid: str
    action: str
    build_s: float
    measured_at: datetime


def vector_index(table):
    """The table's index on `vector` (its IndexConfig), or None."""
    return next((i for i in table.list_indices() if list(i.columns) == [COLUMN]), None)


def read_quality(store: Store, table_name: str | None = None) -> dict[str, Quality]:
    """The recorded gate results, by table."""
    if not store.has(INDEX_QUALITY):
        return {}
    where = None if table_name is None else f"table_name = {sql_quote(table_name)}"
    rows = store.read(INDEX_QUALITY, where=where).to_pylist()
    return {r["table_name"]: Quality(**r) for r in rows}


def ensure_vector_index(store: Store, name: str, *, min_rows: int, target_recall: float) -> Quality | None:
    """Build, extend or keep the vector index of table `name`, then gate it; returns the recorded quality (None for
    a table too small to need an index: exact search is fast and exact there).

    - no index yet, or grown RETRAIN_GROWTH times since trained: (re)build, trained on the current rows;
    - rows appended since: a delta index over them, assigned to the existing partitions (no training; the base
      index is not rewritten); deltas past MAX_DELTAS are merged with each other, never with the base;
    - nothing new and a record for this index: nothing to do (the recorded figure still holds).
    """
    table = store.table(name)
    rows = table.count_rows()
    if rows < min_rows:
        return None
    index = vector_index(table)
    record = read_quality(store, name).get(name)
    started = time.perf_counter()
    if index is None or (record is not None and rows >= RETRAIN_GROWTH * record.trained_rows):
        plan = plan_for(rows)
        log.info("%s: training %s with %d partitions on %d rows", name, plan.index_type, plan.num_partitions, rows)
        table.create_index(COLUMN, config=plan.config(), replace=True)
        action, trained_rows = "built", rows
    else:
        stats = table.index_stats(index.name)
        trained_rows = record.trained_rows if record is not None else stats.num_indexed_rows
        if stats.num_unindexed_rows == 0 and record is not None and record.index_uuid == segment_uuids(table) \
                and record.rows_indexed == rows and record.target_recall == target_recall:
            return record  # idempotent rerun: same index, same rows, a figure gated at this target
        if stats.num_unindexed_rows:
            log.info("%s: indexing %d appended rows as a delta", name, stats.num_unindexed_rows)
            append_delta(table, index.name)
        action = "appended" if stats.num_unindexed_rows else "measured"
    build_s = time.perf_counter() - started
    table = store.table(name)
    quality = gate(table, name, target_recall, action=action, trained_rows=trained_rows, build_s=build_s)
    store.upsert(INDEX_QUALITY, pa.Table.from_pylist([asdict(quality)], schema=QUALITY_SCHEMA), "table_name")
    return quality


def append_delta(table, index_name: str) -> None:
    """Index the unindexed rows as a new delta (num_indices_to_merge=0): vectors go to the nearest trained
    partition, nothing is retrained and the existing indexes are not rewritten. LanceDB's `optimize()` instead
    merges everything into one new index (rewriting every partition; for HNSW, rebuilding every graph)."""
    dataset = table.to_lance()  # moves to each version it commits; `table` would need reopening to see them
    dataset.optimize.optimize_indices(num_indices_to_merge=0, index_names=[index_name])
    deltas = len(dataset.stats.index_stats(index_name)["indices"]) - 1
    if deltas > MAX_DELTAS:
        # The newest `deltas` segments are the deltas (the base is the oldest): merge them, not the base.
        dataset.optimize.optimize_indices(num_indices_to_merge=deltas, index_names=[index_name])


def gate(table, name: str, target_recall: float, *, action: str = "measured", trained_rows: int | None = None,
         build_s: float = 0.0, queries: int = GATE_QUERIES, seed: int = 0) -> Quality:
    """Measure recall@10 of the table's index against exact search and pick the cheapest setting reaching
    `target_recall`; raises UserError naming the table and the best recall reached when none does."""
    index = vector_index(table)
    stats = table.index_stats(index.name)
    sample, truth = exact_neighbours(table, queries, seed)
    partitions = int(_index_stats(table)["indices"][0]["num_partitions"])
    ladder = [n for n in NPROBES_LADDER if n < partitions] + [partitions]
    candidates, best = [], (0.0, (0, 0))
    # From the largest refine down: a smaller refine never needs fewer probes, so each level starts where the one
    # above reached the target, and a level that cannot reach it means no smaller one can.
    start = 0
    for refine in sorted(REFINE_LADDER, reverse=True):
        reached, previous = None, -1.0
        for position in range(start, len(ladder)):
            recall = measure_recall(table, sample, truth, ladder[position], refine)
            if recall > best[0]:
                best = (recall, (ladder[position], refine))
            if recall >= target_recall:
                reached = position
                break
            if recall - previous < PLATEAU:
                break  # more probes no longer help: the quantisation error, not the probes, caps this level
            previous = recall
        if reached is None:
            break
        candidates.append((ladder[reached], refine, recall))
        start = reached
    if not candidates:
        nprobes, refine = best[1]
        raise UserError(
            f"the vector index of {name} reaches recall@10 {best[0]:.3f} at best (nprobes {nprobes}, refine "
            f"{refine}), below ann_target_recall {target_recall}: lower RAVLM_ANN_TARGET_RECALL or rebuild the "
            f"index (drop it and rerun `ravlm embed`)")
    timed = []
    for nprobes, refine, recall in candidates:
        p50 = _p50_ms(table, sample.vectors[:TIMED_QUERIES], nprobes, refine)
        timed.append((p50, nprobes, refine, recall))
    p50, nprobes, refine, recall = min(timed)
    log.info("%s: recall@10 %.3f with nprobes %d refine %d (p50 %.1f ms; target %.2f)", name, recall, nprobes,
             refine, p50, target_recall)
    return Quality(table_name=name, index_type=stats.index_type, num_partitions=partitions, nprobes=nprobes,
                   refine_factor=refine, recall_at_10=recall, target_recall=target_recall, p50_ms=p50,
                   queries=len(sample.row_ids), rows_indexed=stats.num_indexed_rows,
                   trained_rows=trained_rows or stats.num_indexed_rows, index_uuid=segment_uuids(table), action=action,
                   build_s=build_s, measured_at=datetime.now(timezone.utc))


@dataclass
class Sample:
    row_ids: np.ndarray  # [q] uint64
    vectors: np.ndarray  # [q, d] float32, L2-normalised


def exact_neighbours(table, queries: int, seed: int = 0) -> tuple[Sample, np.ndarray]:
    """`queries` stored vectors drawn at random, and the row ids of each one's K nearest other rows by exact
    cosine (numpy over the whole table, one chunk at a time): [q, K]."""
    dataset = table.to_lance()
    rows = dataset.count_rows()
    positions = np.sort(np.random.default_rng(seed).choice(rows, size=min(queries, rows), replace=False))
    taken = dataset.take(positions, columns=[COLUMN, "_rowid"])  # the row ids the scan below reports
    sample = Sample(taken.column("_rowid").to_numpy(), unit_rows_np(vector_matrix(taken.column(COLUMN))))
    best_sims = np.full((len(positions), K), -np.inf, np.float32)
    best_ids = np.zeros((len(positions), K), np.uint64)
    for batch in dataset.to_batches(columns=[COLUMN], with_row_id=True, batch_size=65_536):
        ids = batch.column("_rowid").to_numpy()
        sims = sample.vectors @ unit_rows_np(vector_matrix(batch.column(COLUMN))).T
        sims[sample.row_ids[:, None] == ids[None, :]] = -np.inf  # a query's own row is not its neighbour
        sims = np.concatenate([best_sims, sims], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(ids, (len(positions), len(ids)))], axis=1)
        top = np.argpartition(-sims, K - 1, axis=1)[:, :K]
        best_sims = np.take_along_axis(sims, top, axis=1)
        best_ids = np.take_along_axis(ids, top, axis=1)
    return sample, best_ids


def measure_recall(table, sample: Sample, truth: np.ndarray, nprobes: int, refine: int) -> float:
    """Mean recall@10 of the index at (nprobes, refine): each query asks for K+1 rows so that dropping its own row
    still leaves K."""
    found = [set() for _ in range(len(sample.row_ids))]
    for start in range(0, len(sample.row_ids), QUERY_BLOCK):
        block = sample.vectors[start : start + QUERY_BLOCK]
        result = _query(table, list(block), nprobes, refine, K + 1).with_row_id(True).to_arrow()
        qidx = result.column("query_index").to_numpy() if "query_index" in result.column_names \
            else np.zeros(result.num_rows, int)
        for q, row in zip(qidx, result.column("_rowid").to_numpy()):
            if row != sample.row_ids[start + q] and len(found[start + q]) < K:
                found[start + q].add(int(row))
    return float(np.mean([len(f & set(t.tolist())) / K for f, t in zip(found, truth)]))


def _query(table, vectors, nprobes: int, refine: int, limit: int):
    """An unfiltered vector query at the gate's settings (exactly `nprobes` partitions: measured, leaving the
    maximum open costs time even when the first partitions already hold enough rows)."""
    query = table.search(vectors, vector_column_name=COLUMN).distance_type("cosine").limit(limit)
    query = query.nprobes(nprobes).select(["_distance"])
    return query.refine_factor(refine) if refine else query


def _p50_ms(table, vectors: np.ndarray, nprobes: int, refine: int) -> float:
    _query(table, vectors[0], nprobes, refine, K).to_arrow()  # warm the index cache
    times = []
    for vector in vectors:
        started = time.perf_counter()
        _query(table, vector, nprobes, refine, K).to_arrow()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def _index_stats(table) -> dict:
    return table.to_lance().stats.index_stats(vector_index(table).name)


def segment_uuids(table) -> str:
    """The uuids of the vector index's segments, comma-separated: the base first (kept while deltas are added)."""
    return ",".join(segment["uuid"] for segment in _index_stats(table)["indices"])


# retrieve.search reads the settings once per table version (a new version may carry a new index or record).
_SETTINGS_CACHE: dict[tuple[str, str, int], tuple[int, int] | None] = {}


def search_settings(store: Store, table_name: str, version: int) -> tuple[int, int] | None:
    """(nprobes, refine_factor) the gate chose for `table_name`, or None when it has no gated index."""
    key = (store.uri, table_name, version)
    if key not in _SETTINGS_CACHE:
        record = read_quality(store, table_name).get(table_name)
        _SETTINGS_CACHE[key] = (record.nprobes, record.refine_factor) if record else None
    return _SETTINGS_CACHE[key]
