"""Store upserts: idempotent, and safe when many writers create and fill the same new table at once."""
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from ravlm_core.store import Store


def _rows(start: int, n: int) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(start, start + n)], "x": list(range(start, start + n))})


def test_upsert_is_idempotent_and_updates(store):
    assert store.upsert("t", _rows(0, 5), "id") == 5
    assert store.upsert("t", _rows(3, 5), "id") == 3  # r3, r4 updated; r5..r7 new
    assert store.count("t") == 8
    assert store.existing_ids("t", "id", ["r1", "zz"]) == {"r1"}
    assert store.existing_ids("t", "id", where="x >= 6") == {"r6", "r7"}


def test_concurrent_writers_creating_one_table_lose_nothing(tmp_path):
    uri = str(tmp_path / "db")

    def write(part: int) -> int:
        return Store(uri).upsert("shared", _rows(part * 100, 100), "id")

    with ThreadPoolExecutor(max_workers=5) as pool:
        inserted = list(pool.map(write, range(5)))
    assert sum(inserted) == 500
    assert Store(uri).count("shared") == 500
