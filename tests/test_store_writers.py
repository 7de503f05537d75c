"""Concurrent writers on one store: processes upserting the same new keys at once never duplicate or lose a row."""
from __future__ import annotations

import multiprocessing

import pyarrow as pa

from ravlm_core.store import Store

RUNS, WRITERS, ROUNDS, SHARED_KEYS = 5, 3, 3, 25


def writer(uri: str, table: str, seed: int, barrier) -> None:
    """Each round: the shared keys (as every writer) plus keys of its own, all released at the same moment."""
    store = Store(uri)
    barrier.wait()
    for round_ in range(ROUNDS):
        ids = [f"shared-{i}" for i in range(SHARED_KEYS)] + [f"w{seed}-r{round_}-{i}" for i in range(5)]
        store.upsert(table, pa.table({"id": ids, "writer": [seed] * len(ids)}), "id")


def test_concurrent_upserts_of_the_same_new_keys_never_duplicate_and_never_lose_a_row(tmp_path):
    uri = str(tmp_path / "lancedb")
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate `ravlm` processes are
    duplicates = lost = 0
    for run in range(RUNS):
        barrier = context.Barrier(WRITERS)
        processes = [context.Process(target=writer, args=(uri, f"t{run}", w, barrier)) for w in range(WRITERS)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=300)
        assert [p.exitcode for p in processes] == [0] * WRITERS
        ids = Store(uri).read(f"t{run}", columns=["id"]).column("id").to_pylist()
        duplicates += len(ids) - len(set(ids))
        lost += SHARED_KEYS + WRITERS * ROUNDS * 5 - len(set(ids))
    assert (duplicates, lost) == (0, 0), f"{RUNS} runs x {WRITERS} writers: {duplicates} duplicates, {lost} lost"
