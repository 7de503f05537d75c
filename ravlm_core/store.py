"""LanceDB store: idempotent upserts keyed by id (a rerun never duplicates), reads, per-table write locks; the tables
themselves are named and shaped in schemas.py."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

import lancedb
import pyarrow as pa

# Stores on object storage: writers of one process still take turns per table (see Store.write_lock).
_THREAD_LOCKS: dict[str, threading.Lock] = {}
# A writer waits this long for another's lock before giving up with an error that says so.
LOCK_TIMEOUT_S = 1800


class Store:
    """A thin handle on one LanceDB database; every write is an upsert keyed by the table's id column."""

    def __init__(self, uri: str):
        self.uri = uri
        self.db = lancedb.connect(uri)

    def has(self, name: str) -> bool:
        return name in self.db.list_tables().tables

    def table(self, name: str):
        return self.db.open_table(name)

    def upsert(self, name: str, rows: pa.Table, key: str) -> int:
        """Insert rows whose `key` is new, update the others; returns how many rows were new.

        Two processes merging the same new key into one table at once would both insert it (LanceDB's
        merge_insert checks keys against the version it read, not the one it commits on): measured, two
        concurrent upserts of 25 new keys left 50 rows every time. So writers take the table's lock first.
        """
        if rows.num_rows == 0:
            return 0
        with self.write_lock(name):
            if not self.has(name):
                self.db.create_table(name, schema=rows.schema, exist_ok=True)
            table = self.ensure_columns(name, rows.schema)
            result = (
                table
                .merge_insert(key)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute(rows)
            )
        return result.num_inserted_rows

    def write_lock(self, name: str):
        """An exclusive lock on one table across threads and processes (a lock file beside a local store).

        A store on object storage has no shared file system to lock on, so the lock there holds within one
        process only. Writers in several processes (Ray workers embedding shards into one table) still commit
        safely when their keys differ, as the flows' tasks' keys do: Lance detects concurrent commits with S3's
        conditional writes and retries (benchmarks/s3_concurrent_writes.py: 3 processes x 10 upserts, no row
        lost). Two *runs* upserting the same new keys could duplicate them, so one run at a time per store on
        object storage is the operator's to ensure.
        """
        if "://" in self.uri and not self.uri.startswith("file://"):
            return _THREAD_LOCKS.setdefault(name, threading.Lock())
        from filelock import FileLock

        folder = Path(self.uri.removeprefix("file://").rstrip("/") + ".locks")
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(folder / f"{name}.lock", timeout=LOCK_TIMEOUT_S)

    def ensure_columns(self, name: str, schema: pa.Schema):
        """The table, with the columns of `schema` it lacks added (null in its rows): a store written by an older
        release gains the columns added since, the first time a writer or reader needs them."""
        table = self.table(name)
        missing = [field for field in schema if field.name not in table.schema.names]
        if missing:
            table.add_columns(pa.schema(missing))
        return table

    def existing_ids(self, name: str, key: str, ids: Iterable[str] | None = None, where: str | None = None) -> set[str]:
        """The values of `key` already stored (restricted to `ids` and to rows matching `where` when given)."""
        if not self.has(name):
            return set()
        found = set(self.read(name, columns=[key], where=where).column(key).to_pylist())
        return found if ids is None else found & set(ids)

    def read(self, name: str, columns: list[str] | None = None, where: str | None = None,
             schema: pa.Schema | None = None) -> pa.Table:
        """A whole table (or the rows matching a SQL `where`) as Arrow; empty when the table does not exist.
        With the table's `schema`, columns a store written by an older release lacks are added first (null)."""
        if not self.has(name):
            return pa.table({})
        query = (self.ensure_columns(name, schema) if schema is not None else self.table(name)).search().limit(None)
        if columns is not None:
            query = query.select(columns)
        if where is not None:
            query = query.where(where)
        return query.to_arrow()

    def delete(self, name: str, where: str) -> None:
        if self.has(name):
            self.table(name).delete(where)

    def image_vector_tables(self) -> list[str]:
        return [name for name in self.db.list_tables().tables if name.endswith("__image_vectors")]

    def count(self, name: str, where: str | None = None) -> int:
        """Rows of a table (matching `where` when given); 0 when the table does not exist."""
        return self.table(name).count_rows(where) if self.has(name) else 0


def read_lists(store: Store, table: str, schema: pa.Schema, key: str, column: str, ids: list[str]) -> dict:
    """key -> the non-empty list in `column` (every caption, every human answer) of these rows."""
    if not store.has(table) or not ids:
        return {}
    found = {}
    for part in chunks(sorted(set(ids))):
        rows = store.read(table, columns=[key, column], where=in_list(key, part), schema=schema)
        found.update({k: v for k, v in zip(rows.column(key).to_pylist(), rows.column(column).to_pylist()) if v})
    return found


def sql_quote(value: str) -> str:
    """Quote a string literal for a LanceDB / DataFusion `where` clause."""
    return "'" + value.replace("'", "''") + "'"


def in_list(column: str, values: Iterable[str]) -> str:
    """`column IN (...)` with quoted values; `false` for none (an empty IN list is a syntax error)."""
    values = list(values)
    return f"{column} IN ({', '.join(sql_quote(v) for v in values)})" if values else "false"


def chunks(values: list, size: int = 2000) -> Iterable[list]:
    """Slices of `values`, so an IN list never grows with the collection."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
