"""Nearest neighbours from a LanceDB vector table, batched, with optional filters and leave-one-out."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ravlm_core.store import Store, sql_quote

# Queries per LanceDB call: one call answers many queries (rows carry `query_index`).
QUERY_BATCH = 512


@dataclass
class Neighbours:
    ids: list[list[str]]  # [n_queries][<=k], best first
    scores: list[list[float]]  # cosine similarity, same shape as ids


def kb_filter(dataset: str, split: str | None) -> str:
    """The SQL filter selecting one dataset's knowledge-base split."""
    where = f"dataset = {sql_quote(dataset)}"
    return where if split is None else f"{where} AND split = {sql_quote(split)}"


def search(
    store: Store,
    table: str,
    vectors: np.ndarray,
    k: int,
    *,
    key: str = "image_id",
    where: str | None = None,
    exclude: list[str] | None = None,
    refine_factor: int = 10,
) -> Neighbours:
    """The k nearest rows of `table` for each query vector (float32 [n, d], L2-normalised), by cosine.

    `exclude[i]` is an id query i must not get back (its own image, for leave-one-out training).
    With an IVF index in place, `refine_factor` re-ranks candidates by exact distance for usable recall.
    """
    handle = store.table(table)
    extra = 1 if exclude is not None else 0
    ids: list[list[str]] = []
    scores: list[list[float]] = []
    for start in range(0, len(vectors), QUERY_BATCH):
        batch = vectors[start : start + QUERY_BATCH]
        query = handle.search(list(batch.astype(np.float32))).distance_type("cosine").limit(k + extra)
        query = query.select([key, "_distance"]).refine_factor(refine_factor)
        if where:
            query = query.where(where, prefilter=True)
        result = query.to_arrow()
        # A single query vector comes back without query_index.
        qidx = result.column("query_index").to_numpy() if "query_index" in result.column_names else np.zeros(result.num_rows, int)
        hit_ids = result.column(key).to_pylist()
        sims = 1.0 - result.column("_distance").to_numpy()
        per_query: list[list[tuple[float, str]]] = [[] for _ in range(len(batch))]
        for q, hit, sim in zip(qidx, hit_ids, sims):
            per_query[q].append((float(sim), hit))
        for offset, hits in enumerate(per_query):
            hits.sort(key=lambda h: -h[0])
            own = exclude[start + offset] if exclude is not None else None
            kept = [h for h in hits if h[1] != own][:k]
            ids.append([h[1] for h in kept])
            scores.append([h[0] for h in kept])
    return Neighbours(ids, scores)


def vectors_by_id(store: Store, table: str, ids: list[str], key: str) -> np.ndarray:
    """Stored vectors for `ids`, in that order (float32 [n, d]); a missing id is an error naming it."""
    if not ids:
        return np.zeros((0, 0), np.float32)
    wanted = list(dict.fromkeys(ids))
    found: dict[str, np.ndarray] = {}
    for start in range(0, len(wanted), 2000):
        chunk = wanted[start : start + 2000]
        where = f"{key} IN ({', '.join(sql_quote(i) for i in chunk)})"
        rows = store.read(table, columns=[key, "vector"], where=where)
        vecs = rows.column("vector").combine_chunks()
        flat = vecs.values.to_numpy(zero_copy_only=False).reshape(len(vecs), -1)
        found.update(zip(rows.column(key).to_pylist(), flat))
    missing = [i for i in wanted if i not in found]
    if missing:
        raise KeyError(f"{len(missing)} ids have no vector in {table} (first: {missing[0]}); run `ravlm embed` first")
    return np.stack([found[i] for i in ids]).astype(np.float32)
