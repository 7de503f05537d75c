"""ravlm_core.writer.BatchedWriter: when it commits, and that a failed batch is not committed."""
from __future__ import annotations

import pyarrow as pa
import pytest

from ravlm_core.writer import BatchedWriter


def rows(*ids: str) -> pa.Table:
    return pa.table({"id": list(ids), "value": [len(i) for i in ids]})


def test_commits_once_enough_rows_are_pending_and_the_rest_on_leaving(store):
    with BatchedWriter(store, "t", "id", rows=3) as writer:
        writer.add(rows("a", "b"))
        assert store.count("t") == 0  # two rows pending: below the threshold
        writer.add(rows("c"))
        assert store.count("t") == 3
        writer.add(rows("d"))
        assert store.count("t") == 3
    assert store.count("t") == 4 and writer.new_rows == 4


def test_commits_after_the_time_limit_even_below_the_row_count(store):
    writer = BatchedWriter(store, "t", "id", rows=1000, seconds=0.0)
    writer.add(rows("a"))
    assert store.count("t") == 1


def test_rows_already_stored_are_updated_not_counted_as_new(store):
    with BatchedWriter(store, "t", "id") as writer:
        writer.add(rows("a", "b"))
        writer.add(rows("b", "c"))
    assert store.count("t") == 3 and writer.new_rows == 3


def test_an_error_leaves_the_pending_batch_uncommitted(store):
    with pytest.raises(RuntimeError):
        with BatchedWriter(store, "t", "id", rows=10) as writer:
            writer.add(rows("a"))
            raise RuntimeError("the encoder failed")
    assert store.count("t") == 0
