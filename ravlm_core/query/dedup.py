"""Near-duplicate images: groups of stored images whose vectors are at least `threshold` cosine-similar.

Exact byte copies already share one content id (ingest hashes the bytes), so what is left to find is the
re-encoded, resized, brightened or cropped copy. Each image's nearest neighbours at or above the threshold are
edges, and the groups are their connected components. The neighbours come from blocks of exact similarities
(matrix products) up to `EXACT_MAX_ROWS` images, far faster there than one index query per image, and from the
vector index, in batches of queries, above it; never from a loop over pairs in Python.
"""
from __future__ import annotations

import logging

import numpy as np

from ravlm_core.errors import UserError
from ravlm_core.query.results import Hits
from ravlm_core.retrieval.filters import listed_in, listing_where
from ravlm_core.retrieval.search import QUERY_BATCH, search
from ravlm_core.schemas import IMAGES, image_vectors_table
from ravlm_core.store import Store, chunks, in_list
from ravlm_core.vectors import vector_matrix

log = logging.getLogger(__name__)

# Neighbours looked at per image: a larger group still comes out whole, joined through its members.
NEIGHBOURS = 10
# Up to this many images every similarity is computed; the vectors are held in memory (200k x 256 = 200 MB).
# benchmarks/dedup_bench.py, 20k images: exact 6.7 s, one index query per image 98.5 s (2 busy cores). The exact
# cost grows with the square of the images and the index's linearly: they meet around here.
EXACT_MAX_ROWS = 200_000
# Similarities computed per block of the exact route (float32: 256 MB).
BLOCK_CELLS = 1 << 26

Pair = tuple[str, str, float]


def near_duplicates(store: Store, model_tag: str, threshold: float, dataset: str | None = None,
                    split: str | None = None, neighbours: int = NEIGHBOURS,
                    exact_max_rows: int = EXACT_MAX_ROWS) -> Hits:
    """The groups of images (listed in `dataset` / `split` when given) whose vectors from encoder `model_tag`
    are at least `threshold` cosine-similar to another member, largest similarity first.

    Returns `Hits` of kind "duplicates": one row per member with its group number, the group's size, the
    member's best similarity to another member, one of its listings and how many listings show it.

    Raises:
        UserError: the threshold is not in (0, 1], or the encoder has no image vectors yet.
    """
    if not 0 < threshold <= 1:
        raise UserError(f"--threshold must be a cosine similarity in (0, 1], got {threshold}")
    table = image_vectors_table(model_tag)
    if not store.has(table):
        raise UserError(f"no image vectors for encoder {model_tag} in {store.uri}: run `ravlm embed` first")
    where = listed_in(store, dataset, split)
    scan = store.table(table).search().select(["image_id", "vector"]).limit(None)
    batches = (scan.where(where) if where else scan).to_batches(QUERY_BATCH)
    if store.count(table, where) <= exact_max_rows:
        ids, pairs = _pairs_exact(batches, threshold, neighbours)
    else:
        ids, pairs = _pairs_indexed(store, table, batches, where, threshold, neighbours)
    groups = _components(ids, pairs)
    log.info("near-duplicates at cosine >= %s: %d groups among %d images", threshold, len(groups), len(ids))
    return Hits(_rows(store, groups, pairs, listing_where((), dataset, split)), kind="duplicates",
                title=f"near-duplicates at cosine similarity >= {threshold}")


def _pairs_exact(batches, threshold: float, neighbours: int) -> tuple[list[str], list[Pair]]:
    """The pairs at or above the threshold among each image's `neighbours` nearest, from blocks of exact
    similarities (vectors are L2-normalised). Capping the neighbours keeps a low threshold from listing every
    pair of a large collection; the groups still come out whole, joined through their members."""
    batches = [batch for batch in batches if batch.num_rows]
    ids = [image_id for batch in batches for image_id in batch.column("image_id").to_pylist()]
    if len(ids) < 2:
        return ids, []
    vectors = np.concatenate([vector_matrix(batch.column("vector")) for batch in batches])  # [n, d]
    nearest = min(neighbours, len(ids) - 1)
    pairs: list[Pair] = []
    step = max(1, BLOCK_CELLS // len(ids))
    for start in range(0, len(ids), step):
        sims = vectors[start : start + step] @ vectors.T  # [block, n]
        block = np.arange(len(sims))
        sims[block, start + block] = -np.inf  # an image is not its own neighbour
        close = np.flatnonzero((sims >= threshold).any(axis=1))  # most images have no near-duplicate at all
        if not close.size:
            continue
        top = np.argpartition(-sims[close], nearest - 1, axis=1)[:, :nearest]  # [close, nearest]
        top_sims = np.take_along_axis(sims[close], top, axis=1)
        rows, cols = np.nonzero(top_sims >= threshold)
        pairs += [(ids[start + close[r]], ids[top[r, c]], float(top_sims[r, c])) for r, c in zip(rows, cols)]
    return ids, pairs


def _pairs_indexed(store: Store, table: str, batches, where: str | None, threshold: float,
                   neighbours: int) -> tuple[list[str], list[Pair]]:
    """The pairs at or above the threshold among each image's `neighbours` nearest, from the vector index."""
    ids: list[str] = []
    pairs: list[Pair] = []
    for batch in batches:
        if not batch.num_rows:
            continue
        own = batch.column("image_id").to_pylist()
        ids += own
        # The neighbour list would include the image itself; the search keeps it out of its own k.
        hits = search(store, table, vector_matrix(batch.column("vector")), neighbours, where=where, exclude=own)
        pairs += [(a, b, s) for a, found, sims in zip(own, hits.ids, hits.scores)
                  for b, s in zip(found, sims) if s >= threshold]
    return ids, pairs


def _components(ids: list[str], pairs: list[Pair]) -> list[list[str]]:
    """The connected components with two or more members, each sorted."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    index = {image_id: n for n, image_id in enumerate(ids)}
    edges = [(index[a], index[b]) for a, b, _ in pairs if a in index and b in index]
    if not edges:
        return []
    rows, cols = np.array(edges).T
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[str]] = {}
    for image_id, label in zip(ids, labels):
        members.setdefault(int(label), []).append(image_id)
    return [sorted(group) for group in members.values() if len(group) > 1]


def _rows(store: Store, groups: list[list[str]], pairs: list[Pair], where: str) -> list[dict]:
    """One row per member, groups ordered by their closest pair, members by their best similarity."""
    best: dict[str, float] = {}
    for a, b, sim in pairs:
        best[a], best[b] = max(best.get(a, sim), sim), max(best.get(b, sim), sim)
    listings = _listings(store, [i for group in groups for i in group], where)
    ordered = sorted(groups, key=lambda group: (-max(best[i] for i in group), group[0]))
    rows = []
    for number, group in enumerate(ordered, 1):
        for image_id in sorted(group, key=lambda i: (-best[i], i)):
            shown = listings.get(image_id, [{}])
            rows.append({"group": number, "size": len(group), "similarity": round(best[image_id], 6),
                         "image_id": image_id, **{key: shown[0].get(key) for key in ("dataset", "split", "path",
                                                                                    "caption")},
                         "listings": len(listings.get(image_id, []))})
    return rows


def _listings(store: Store, image_ids: list[str], where: str) -> dict[str, list[dict]]:
    """Each image's listings matching `where`, first by dataset, split, path."""
    found: dict[str, list[dict]] = {}
    for part in chunks(sorted(set(image_ids))):
        table = store.read(IMAGES, columns=["image_id", "dataset", "split", "path", "caption"],
                           where=f"{in_list('image_id', part)} AND {where}")
        if not table.num_rows:
            continue
        for row in table.sort_by([("dataset", "ascending"), ("split", "ascending"), ("path", "ascending")]).to_pylist():
            found.setdefault(row["image_id"], []).append(row)
    return found

