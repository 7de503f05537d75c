"""Vector index benchmark: recall@10 against exact search and latency of the ANN index the embed flow builds.

    python benchmarks/ann_bench.py --rows 1000000 --json

Writes `--rows` clustered unit vectors (`--clusters` gaussian clusters in `--dim` dimensions, float32, generated in
chunks) to an image-vector table in a temporary LanceDB store (or `--dir`), then runs `indexing.build_indexes` on
it exactly as the embed flow does: scalar indexes, the vector index chosen by table size, and the quality gate
that picks (nprobes, refine) for `--target` recall@10. Queries are new points from the same clusters (not stored
rows). Measured one query at a time:

- recall@10 / p50 / p95 of a LanceDB query with the gate's settings (`p50_ms`), of `retrieve.search` (which
  reads them itself; adds opening the table and shaping hits), and of LanceDB's default query settings;
- numpy brute force over the vectors in memory (`brute_force_p50_ms`), which also gives the exact answers;
- a selective filtered search (one `dataset:split` label of `--labels`, ~1/labels of the rows) through
  `retrieve.search`: under `retrieve.FLAT_MAX_ROWS` rows it is an exact search over the filtered vectors, read
  once per table version (`filtered_first_ms`: the first query, which reads them; p50 / p95: the queries after),
  and beside it the same filter through LanceDB's prefiltered index search (`filtered_index_*`);
- appending `--append` more rows and re-running build_indexes: the delta index and the gate (`append_s`).

Prints one JSON object on stdout with --json.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from ravlm_core.index import ann
from ravlm_core.index.indexes import build_indexes
from ravlm_core.retrieval import search as retrieve
from ravlm_core.schemas import MEMBERSHIPS, image_vectors_table, membership_label, vector_schema
from ravlm_core.store import Store

TAG = "bench"
CHUNK = 100_000


class Clusters:
    def __init__(self, clusters: int, dim: int, spread: float, seed: int):
        self.centres = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)
        self.spread = spread

    def draw(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = self.centres[rng.integers(0, len(self.centres), n)]
        x += self.spread * rng.standard_normal(x.shape, dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_rows(store: Store, table: str, vectors: np.ndarray, first: int, labels: int) -> None:
    n, dim = vectors.shape
    rows = pa.Table.from_pydict(
        {"image_id": [f"{first + i:09d}" for i in range(n)],
         "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
         "memberships": [[membership_label(f"d{(first + i) % labels}", "train")] for i in range(n)],
         "model_tag": pa.array([TAG] * n), "embedded_at": pa.array([datetime.now(timezone.utc)] * n,
                                                                   pa.timestamp("us", tz="UTC"))},
        schema=vector_schema(dim, "image_id", MEMBERSHIPS))
    if store.has(table):
        store.table(table).add(rows)  # plain appends: ids are new by construction, no merge needed
    else:
        store.db.create_table(table, rows)


def exact_top(stored: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    sims = queries @ stored.T
    if mask is not None:
        sims[:, ~mask] = -np.inf
    return np.argsort(-sims, axis=1)[:, :k]


def timed_search(store, table, queries, k, **kwargs) -> tuple[list[list[str]], list[float]]:
    ids, times = [], []
    retrieve.search(store, table, queries[:1], k, **kwargs)  # warm caches
    for query in queries:
        started = time.perf_counter()
        ids.append(retrieve.search(store, table, query[None, :], k, **kwargs).ids[0])
        times.append((time.perf_counter() - started) * 1000)
    return ids, times


def raw_search(store, table, queries, k, settings: tuple[int, int] | None) -> tuple[list[list[str]], list[float]]:
    """One LanceDB query per vector on an open table, at the gate's (nprobes, refine) or, with None, at LanceDB's
    query defaults (what a search without the gate gets)."""
    handle = store.table(table)
    ids, times = [], []
    for query in queries:
        started = time.perf_counter()
        search = handle.search(query).distance_type("cosine").limit(k).select(["image_id", "_distance"])
        if settings is not None:
            search = search.nprobes(settings[0])
            search = search.refine_factor(settings[1]) if settings[1] else search
        result = search.to_arrow()
        times.append((time.perf_counter() - started) * 1000)
        ids.append(result.column("image_id").to_pylist())
    return ids, times


def recall(ids: list[list[str]], exact: np.ndarray) -> float:
    hits = [len({int(i) for i in got} & set(want.tolist())) / want.size for got, want in zip(ids, exact)]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="per-dimension noise around unit-variance centres")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--labels", type=int, default=100, help="membership labels; the filter selects one")
    parser.add_argument("--append", type=int, default=0, help="rows appended after the build (default rows/100)")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--dir", default="", help="LanceDB folder (default: a temporary one, removed after)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    k = 10
    append = args.append or args.rows // 100
    workdir = tempfile.TemporaryDirectory() if not args.dir else None
    store = Store(args.dir or os.path.join(workdir.name, "lancedb"))
    table = image_vectors_table(TAG)
    clusters = Clusters(args.clusters, args.dim, args.spread, seed=0)

    chunks = []
    for chunk, first in enumerate(range(0, args.rows, CHUNK)):
        vectors = clusters.draw(min(CHUNK, args.rows - first), seed=1 + chunk)
        write_rows(store, table, vectors, first, args.labels)
        chunks.append(vectors)
    stored = np.concatenate(chunks)
    del chunks
    write_s = time.perf_counter() - started

    began = time.perf_counter()
    build_indexes(store, TAG, None, min_rows_for_ann=0, target_recall=args.target)
    index_s = time.perf_counter() - began
    quality = ann.read_quality(store)[table]

    queries = clusters.draw(args.queries, seed=10**6)
    brute_ms = []
    for query in queries:
        began = time.perf_counter()
        sims = stored @ query
        np.argpartition(-sims, k)[:k]
        brute_ms.append((time.perf_counter() - began) * 1000)
    exact = exact_top(stored, queries, k)
    raw_search(store, table, queries[:5], k, None)  # warm the index cache
    ids, times = raw_search(store, table, queries, k, (quality.nprobes, quality.refine_factor))
    default_ids, default_times = raw_search(store, table, queries, k, None)
    search_ids, search_times = timed_search(store, table, queries, k)

    label = membership_label("d0", "train")
    mask = np.arange(args.rows) % args.labels == 0
    where = retrieve.vector_sets_filter([("d0", "train")])
    retrieve._FLAT.clear()
    began = time.perf_counter()
    retrieve.search(store, table, queries[:1], k, where=where)
    filtered_first_ms = (time.perf_counter() - began) * 1000
    filtered_ids, filtered_times = timed_search(store, table, queries, k, where=where)
    flat_max_rows, retrieve.FLAT_MAX_ROWS = retrieve.FLAT_MAX_ROWS, 0  # the index path, for comparison
    retrieve._FLAT.clear()
    index_filtered_ids, index_filtered_times = timed_search(store, table, queries, k, where=where)
    retrieve.FLAT_MAX_ROWS = flat_max_rows
    retrieve._FLAT.clear()
    filtered_exact = exact_top(stored, queries, k, mask)

    extra = clusters.draw(append, seed=10**6 + 1)
    write_rows(store, table, extra, args.rows, args.labels)
    began = time.perf_counter()
    build_indexes(store, TAG, None, min_rows_for_ann=0, target_recall=args.target)
    append_s = time.perf_counter() - began
    after = ann.read_quality(store)[table]
    appended_ids, _ = timed_search(store, table, extra[:50], 1)
    appended_found = np.mean([got[:1] == [f"{args.rows + i:09d}"] for i, got in enumerate(appended_ids)])

    result = {
        "rows": args.rows, "dim": args.dim, "clusters": args.clusters, "spread": args.spread,
        "queries": args.queries, "target_recall": args.target,
        "index_type": quality.index_type, "num_partitions": quality.num_partitions,
        "nprobes": quality.nprobes, "refine_factor": quality.refine_factor,
        "gate_recall@10": round(quality.recall_at_10, 4),
        "recall@10": round(recall(ids, exact), 4),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        "retrieve_search_recall@10": round(recall(search_ids, exact), 4),
        "retrieve_search_p50_ms": round(float(np.percentile(search_times, 50)), 2),
        "default_settings_recall@10": round(recall(default_ids, exact), 4),
        "default_settings_p50_ms": round(float(np.percentile(default_times, 50)), 2),
        "default_settings_p95_ms": round(float(np.percentile(default_times, 95)), 2),
        "brute_force_p50_ms": round(float(np.percentile(brute_ms, 50)), 2),
        "filtered_fraction": round(float(mask.mean()), 4), "filter": label,
        "filtered_recall@10": round(recall(filtered_ids, filtered_exact), 4),
        "filtered_p50_ms": round(float(np.percentile(filtered_times, 50)), 2),
        "filtered_p95_ms": round(float(np.percentile(filtered_times, 95)), 2),
        "filtered_first_ms": round(filtered_first_ms, 1),
        "filtered_index_recall@10": round(recall(index_filtered_ids, filtered_exact), 4),
        "filtered_index_p50_ms": round(float(np.percentile(index_filtered_times, 50)), 2),
        "build_s": round(quality.build_s, 1),
        "index_and_gate_s": round(index_s, 1),
        "append_rows": append, "append_s": round(append_s, 1), "append_index_s": round(after.build_s, 2),
        "append_action": after.action, "append_gate_recall@10": round(after.recall_at_10, 4),
        "append_nprobes": after.nprobes, "append_refine_factor": after.refine_factor,
        "appended_rows_found_first": float(appended_found),
        "base_index_kept": after.index_uuid.split(",")[0] == quality.index_uuid.split(",")[0],
        "write_s": round(write_s, 1), "total_s": round(time.perf_counter() - started, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }
    if workdir is not None:
        workdir.cleanup()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
