"""`ravlm dedup`'s scan on synthetic vectors: time, and how many planted near-duplicate pairs it finds.

    python benchmarks/dedup_bench.py [--rows 20000] [--dim 256] [--pairs 200] [--threshold 0.95] [--json]

Writes `--rows` random unit vectors into a throwaway store's image vector table (as `ravlm embed` would), of
which `--pairs` are planted near-copies of another row (cosine about 0.98), indexes the table as `ravlm embed`
does (an IVF-HNSW-SQ index from 10,000 rows), and runs `dedup.near_duplicates` over it both ways: exact blocks
of similarities, and one index query per image. Random 256-d vectors are nearly orthogonal, so every pair found
above 0.95 should be a planted one.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pyarrow as pa

from ravlm_core.config import Settings
from ravlm_core.index.indexes import build_indexes
from ravlm_core.query.dedup import near_duplicates
from ravlm_core.schemas import MEMBERSHIPS, image_vectors_table, vector_schema
from ravlm_core.store import Store

TAG = "bench-1"


def planted_store(folder: str, rows: int, dim: int, pairs: int, seed: int = 0) -> tuple[Store, set[frozenset]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    planted = set()
    for copy, original in zip(range(rows - pairs, rows), rng.choice(rows - pairs, pairs, replace=False)):
        noisy = vectors[original] + rng.standard_normal(dim).astype(np.float32) * 0.2 / np.sqrt(dim)
        vectors[copy] = noisy / np.linalg.norm(noisy)
        planted.add(frozenset((f"i{copy:07d}", f"i{original:07d}")))
    ids = [f"i{n:07d}" for n in range(rows)]
    store = Store(folder)
    table = pa.Table.from_pydict({"image_id": ids, "vector": list(vectors), "memberships": [["bench:test"]] * rows,
                                  "model_tag": [TAG] * rows, "embedded_at": [None] * rows},
                                 schema=vector_schema(dim, "image_id", MEMBERSHIPS))
    store.db.create_table(image_vectors_table(TAG), table)
    settings = Settings()
    build_indexes(store, TAG, None, settings.min_rows_for_ann, settings.ann_target_recall)
    return store, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        store, planted = planted_store(folder, args.rows, args.dim, args.pairs)
        build_s = time.perf_counter() - start
        indexes = [index.index_type for index in store.table(image_vectors_table(TAG)).list_indices()]
        result = {"rows": args.rows, "dim": args.dim, "planted_pairs": len(planted), "threshold": args.threshold,
                  "indexes": indexes, "store_build_s": round(build_s, 2)}
        # The exact route (blocks of matrix products) and the index route (one ANN query per image, batched).
        for route, exact_max_rows in (("exact", args.rows), ("index", 0)):
            start = time.perf_counter()
            rows = near_duplicates(store, TAG, args.threshold, exact_max_rows=exact_max_rows)
            seconds = time.perf_counter() - start
            groups: dict[int, set[str]] = {}
            for row in rows:
                groups.setdefault(row["group"], set()).add(row["image_id"])
            found = {frozenset(group) for group in groups.values()}
            result[route] = {"seconds": round(seconds, 2), "groups": len(groups),
                             "planted_found": len(found & planted), "other_groups": len(found - planted)}
    print(json.dumps(result) if args.json else "\n".join(f"{key}: {value}" for key, value in result.items()))


if __name__ == "__main__":
    main()
