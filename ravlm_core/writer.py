"""The writer end of every reader → mapper → writer loop (embedding shards, generating predictions): rows are
upserted in commits, so a crash loses at most the rows since the last commit and the rerun skips what landed."""
from __future__ import annotations

import time

import pyarrow as pa

from ravlm_core.store import Store


class BatchedWriter:
    """Upserts the tables it is given once `rows` rows are pending or `seconds` have passed since the last commit,
    whichever comes first, and whatever is left on `close()` (or on leaving a `with` block without an error).

    Each LanceDB merge costs ~15 ms and leaves a fragment, so small fast batches are gathered (embedding: 2,048
    rows or 10 s); slow ones are committed as they come (generation: `rows=1`).
    """

    def __init__(self, store: Store, table: str, key: str, rows: int = 1, seconds: float = float("inf")):
        self.store, self.table, self.key = store, table, key
        self.rows, self.seconds = rows, seconds
        self.new_rows = 0  # rows the commits inserted (not updated)
        self.write_s = 0.0  # time spent committing
        self._pending: list[pa.Table] = []
        self._last_commit = time.perf_counter()

    def add(self, rows: pa.Table) -> None:
        self._pending.append(rows)
        if (sum(t.num_rows for t in self._pending) >= self.rows
                or time.perf_counter() - self._last_commit >= self.seconds):
            self.flush()

    def flush(self) -> None:
        started = self._last_commit = time.perf_counter()
        if self._pending:
            self.new_rows += self.store.upsert(self.table, pa.concat_tables(self._pending), self.key)
            self._pending.clear()
        self.write_s += time.perf_counter() - started

    close = flush

    def __enter__(self) -> BatchedWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:  # a failed batch is not committed: the rerun computes it again
            self.flush()
