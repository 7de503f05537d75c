"""Nearest neighbours from a LanceDB vector table, batched, with filters and a leakage guard."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ravlm_core.contents import stored_values
from ravlm_core.errors import UserError
from ravlm_core.imaging import signature_distance
from ravlm_core.index import ann
from ravlm_core.schemas import ACTIVE, membership_label
from ravlm_core.store import Store, sql_quote
from ravlm_core.vectors import unit_rows_np, vector_matrix

# Queries per LanceDB call: one call answers many queries (rows carry `query_index`).
QUERY_BATCH = 512
# Extra hits fetched per query when near-duplicates are dropped, so most queries still get k neighbours.
GUARD_OVERFETCH = 8
# Re-ranking for an ANN index without a gate record (built before the gate existed).
UNGATED_REFINE = 10
# A filter that passes at most this many rows is searched exactly, in memory: its rows' vectors are read once per
# table version and filter (the last FLAT_CACHE_ENTRIES kept, ~30 MB each at 384-d) and each batch of queries is a
# matrix product. At 1M rows and a 1% filter (benchmarks/ann_bench.py), LanceDB's prefiltered index search took
# 42 ms a query at recall 0.993; the product over those 10k vectors took 1.7 ms and is exact.
FLAT_MAX_ROWS = 20_000
FLAT_CACHE_ENTRIES = 4


@dataclass
class Guard:
    """The leakage guard for a batch of queries: a KB image that is a query's own bytes (same content id) or a
    near-duplicate of it (pixel signatures within `max_distance` grey levels) is counted, and dropped when `drop`."""

    own_ids: list[str | None]  # [n_queries]: the query's content id, None for an image the store never saw
    signatures: list[bytes | None]  # [n_queries]: `imaging.signature` of the query image
    max_distance: float
    drop: bool = True


@dataclass
class Neighbours:
    ids: list[list[str]]  # [n_queries][<=k], best first
    scores: list[list[float]]  # cosine similarity, same shape as ids
    guarded: list[int] = field(default_factory=list)  # [n_queries]: KB hits the leakage guard left out

    @classmethod
    def none(cls, n: int) -> Neighbours:
        """What `n` queries get without retrieval: no neighbours, nothing guarded."""
        return cls([[] for _ in range(n)], [[] for _ in range(n)], [0] * n)


def kb_filter(dataset: str, split: str | None = None) -> str:
    """The SQL filter selecting the listed (not removed) rows of one dataset (split) in `images` / `qa`."""
    where = f"dataset = {sql_quote(dataset)} AND {ACTIVE}"
    return where if split is None else f"{where} AND split = {sql_quote(split)}"


def sets_filter(sets: list[tuple[str, str]]) -> str:
    """`images` / `qa` rows in any of these (dataset, split) sets."""
    return "(" + " OR ".join(f"({kb_filter(d, s)})" for d, s in sets) + ")"


def vector_sets_filter(sets: list[tuple[str, str]]) -> str:
    """Image vector rows listed in any of these (dataset, split) sets (their `memberships` labels)."""
    labels = ", ".join(sql_quote(membership_label(d, s)) for d, s in sets)
    return f"array_has_any(memberships, [{labels}])"


def search(
    store: Store,
    table: str,
    vectors: np.ndarray,
    k: int,
    *,
    key: str = "image_id",
    where: str | None = None,
    exclude: list[str] | None = None,
    guard: Guard | None = None,
    refine_factor: int | None = None,
    where_rows: int | None = None,
) -> Neighbours:
    """The k nearest rows of `table` for each query vector (float32 [n, d], L2-normalised), by cosine.

    `exclude[i]` is an id query i must not get back (leave-one-out training). `guard` counts each query's own
    bytes and near-duplicates among its hits (`guarded`) and drops them unless told only to count.
    With an ANN index in place, the (nprobes, refine_factor) its quality gate chose for the table are used
    (`ann.search_settings`); `refine_factor` overrides the refine. A table under `min_rows_for_ann` has no index
    and is searched exactly; an index the gate has not measured (an older store) gets refine 10. A `where` that
    passes at most FLAT_MAX_ROWS rows is searched exactly in memory instead (`_filtered_rows`); `where_rows`, the
    rows `where` passes at most when the caller knows it (an id list), saves counting them.
    """
    try:
        handle = store.table(table)
    except ValueError:  # LanceDB's "Table ... was not found"
        if store.has(table):
            raise
        raise UserError(f"there is no table {table} in {store.uri}: run `ravlm embed` first") from None
    gated = ann.search_settings(store, table, handle.version)
    flat = _filtered_rows(store, handle, table, key, where, where_rows) if where else None
    extra = (1 if exclude is not None else 0) + (GUARD_OVERFETCH if guard is not None else 0)
    dropped: list[int] = []
    ids: list[list[str]] = []
    scores: list[list[float]] = []
    for start in range(0, len(vectors), QUERY_BATCH):
        batch = vectors[start : start + QUERY_BATCH]
        if flat is not None:
            qidx, hit_ids, sims = _exact_hits(flat, batch, k + extra)
        else:
            refine = refine_factor if refine_factor is not None else (gated[1] if gated else UNGATED_REFINE)
            qidx, hit_ids, sims = _index_hits(handle, batch, k + extra, key, where, gated, refine)
        per_query: list[list[tuple[float, str]]] = [[] for _ in range(len(batch))]
        for q, hit, sim in zip(qidx, hit_ids, sims):
            per_query[q].append((float(sim), hit))
        hit_signatures = signatures_of(store, set(hit_ids)) if guard is not None else {}
        for offset, hits in enumerate(per_query):
            hits.sort(key=lambda h: -h[0])
            own = exclude[start + offset] if exclude is not None else None
            hits = [h for h in hits if h[1] != own]
            leaks = _leaks(guard, start + offset, hits, hit_signatures) if guard is not None else set()
            dropped.append(len(leaks))
            kept = [h for h in hits if h[1] not in leaks] if guard is not None and guard.drop else hits
            kept = kept[:k]
            ids.append([h[1] for h in kept])
            scores.append([h[0] for h in kept])
    return Neighbours(ids, scores, dropped)


def _index_hits(handle, batch: np.ndarray, limit: int, key: str, where: str | None, gated, refine: int | None):
    """(query index, key, cosine) of each hit LanceDB returns for `batch`, through the vector index if any."""
    query = handle.search(list(batch.astype(np.float32))).distance_type("cosine").limit(limit)
    query = query.select([key, "_distance"])
    if gated is not None:
        # Unfiltered: exactly the gate's nprobes. Under a prefilter, nprobes is only a minimum with no maximum:
        # measured at 1M rows with a filter passing 1% of them (a one-off check beside ann_bench.py), bounded
        # probes miss most filtered neighbours (recall@10 0.83 at 20 probes, 0.88 at 200) while the open
        # maximum reaches 0.995, at ~50 ms p50 instead of ~6-10 ms.
        query = query.nprobes(gated[0]) if not where else query.minimum_nprobes(gated[0]).maximum_nprobes(0)
    if refine:
        query = query.refine_factor(refine)
    if where:
        query = query.where(where, prefilter=True)
    result = query.to_arrow()
    # A single query vector comes back without query_index.
    qidx = result.column("query_index").to_numpy() if "query_index" in result.column_names else np.zeros(result.num_rows, int)
    return qidx, result.column(key).to_pylist(), 1.0 - result.column("_distance").to_numpy()


@dataclass(frozen=True)
class _Rows:
    keys: list[str]
    vectors: np.ndarray  # float32 [n, d], unit rows


_FLAT: OrderedDict[tuple, _Rows | None] = OrderedDict()
_FLAT_LOCK = threading.Lock()  # flows search from several threads at once


def _filtered_rows(store: Store, handle, table: str, key: str, where: str, bound: int | None) -> _Rows | None:
    """The rows `where` passes with their unit vectors, when there are at most FLAT_MAX_ROWS of them (else None);
    remembered per table version, so a batch job or a notebook repeating one filter reads them once."""
    cache_key = (store.uri, table, handle.version, key, where)
    with _FLAT_LOCK:
        if cache_key in _FLAT:
            _FLAT.move_to_end(cache_key)
            return _FLAT[cache_key]
    rows = None
    if (bound if bound is not None else handle.count_rows(where)) <= FLAT_MAX_ROWS:
        found = handle.search().where(where).select([key, "vector"]).limit(None).to_arrow()
        rows = _Rows(found.column(key).to_pylist(), unit_rows_np(vector_matrix(found.column("vector"))))
    with _FLAT_LOCK:
        _FLAT[cache_key] = rows
        while len(_FLAT) > FLAT_CACHE_ENTRIES:
            _FLAT.popitem(last=False)
    return rows


def _exact_hits(rows: _Rows, batch: np.ndarray, limit: int):
    """(query index, key, cosine) of each query's `limit` best rows, by a matrix product over all of them."""
    if not rows.keys:
        return np.zeros(0, int), [], np.zeros(0, np.float32)
    sims = unit_rows_np(batch) @ rows.vectors.T  # [n_queries, n_rows]
    limit = min(limit, sims.shape[1])
    best = np.argpartition(-sims, limit - 1, axis=1)[:, :limit]
    qidx = np.repeat(np.arange(len(batch)), limit)
    return qidx, [rows.keys[i] for i in best.ravel()], sims[qidx, best.ravel()]


def _leaks(guard: Guard, query: int, hits: list[tuple[float, str]], hit_signatures: dict[str, bytes]) -> set[str]:
    """The hits that are query `query`'s own bytes or near-duplicates of it."""
    own, mine = guard.own_ids[query], guard.signatures[query]
    leaks = {hit for _, hit in hits if hit == own}
    if mine is not None:
        for _, hit in hits:
            theirs = hit_signatures.get(hit)
            if theirs is not None and signature_distance(mine, theirs) <= guard.max_distance:
                leaks.add(hit)
    return leaks


def signatures_of(store: Store, image_ids) -> dict[str, bytes]:
    """Pixel signatures of stored contents (see `imaging.signature`)."""
    return stored_values(store, image_ids, "signature")


def vectors_by_id(store: Store, table: str, ids: list[str], key: str) -> np.ndarray:
    """Stored vectors for `ids`, in that order (float32 [n, d]); a missing id (or table) is a UserError naming it."""
    if not ids:
        return np.zeros((0, 0), np.float32)
    if not store.has(table):
        raise UserError(f"there is no table {table} in {store.uri}: run `ravlm embed` first")
    wanted = list(dict.fromkeys(ids))
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(wanted), 2000):
        chunk = wanted[start : start + 2000]
        where = f"{key} IN ({', '.join(sql_quote(i) for i in chunk)})"
        rows = store.read(table, columns=[key, "vector"], where=where)
        found.update(zip(rows.column(key).to_pylist(), vector_matrix(rows.column("vector"))))
    missing = [i for i in wanted if i not in found]
    if missing:
        raise UserError(f"{len(missing)} ids have no vector in {table} in {store.uri} (first id: {missing[0]}): run "
                        f"`ravlm embed` first")
    return np.stack([found[i] for i in ids]).astype(np.float32)


def stored_guard(store: Store, knowledge, image_ids: list[str]) -> Guard:
    """The leakage guard for stored images: their own ids and pixel signatures."""
    signatures = signatures_of(store, image_ids)
    return Guard(image_ids, [signatures.get(i) for i in image_ids], knowledge.config.near_duplicate_distance,
                 drop=knowledge.config.leakage_guard)
