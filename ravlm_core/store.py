"""LanceDB store: table names, schemas, and idempotent upserts keyed by id (a rerun never duplicates)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

import lancedb
import pyarrow as pa

IMAGES = "images"
QA = "qa"
CONTENTS = "contents"
CAPTION_PREDICTIONS = "caption_predictions"
VQA_PREDICTIONS = "vqa_predictions"
PREDICTION_TABLES = (VQA_PREDICTIONS, CAPTION_PREDICTIONS)
EVAL_RUNS = "eval_runs"
# Rows kept with `ingest --keep-removed` carry `removed_at`; every reader of the living collection filters on this.
ACTIVE = "removed_at IS NULL"

# One row per listing of an image in a dataset: (dataset, path) is a membership, the bytes are content.
IMAGES_SCHEMA = pa.schema(
    [
        ("member_id", pa.string()),  # hash of (dataset, path)
        ("image_id", pa.string()),  # content hash of the image bytes (one `contents` row however often listed)
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("path", pa.string()),  # relative to the dataset folder, posix
        ("uri", pa.string()),  # where the file was read from
        ("width", pa.int32()),  # as displayed (EXIF orientation applied)
        ("height", pa.int32()),
        ("format", pa.string()),
        ("caption", pa.string()),
        ("captions", pa.list_(pa.string())),  # every reference caption when the source has several (COCO: 5)
        ("extra", pa.string()),  # JSON object of the manifest's other columns, or null
        ("annotation", pa.string()),  # digest of split, caption, extra and QA pairs: a change is a re-annotation
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("removed_at", pa.timestamp("us", tz="UTC")),
    ]
)

QA_SCHEMA = pa.schema(
    [
        ("qa_id", pa.string()),  # hash of (member_id, image_id, question, answer, question_type)
        ("member_id", pa.string()),
        ("image_id", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("answers", pa.list_(pa.string())),  # every human answer when the source has several (VQAv2: 10)
        ("question_type", pa.string()),
        ("removed_at", pa.timestamp("us", tz="UTC")),
    ]
)

# One row per distinct image content; the full bytes live in the Parquet shard named by `shard`.
CONTENTS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("source_mode", pa.string()),  # the file's pixel mode before normalisation to RGB (I;16, P, CMYK ...)
        ("thumbnail", pa.binary()),  # small JPEG of the normalised pixels the encoder sees
        ("signature", pa.binary()),  # 16x16 RGB of the same pixels: the leakage guard's near-duplicate test
        ("shard", pa.string()),
    ]
)


# Stores on object storage: writers of one process still take turns per table (see Store.write_lock).
_THREAD_LOCKS: dict[str, threading.Lock] = {}
# A writer waits this long for another's lock before giving up with an error that says so.
LOCK_TIMEOUT_S = 1800


def image_vectors_table(model_tag: str) -> str:
    return f"{model_tag}__image_vectors"


def text_vectors_table(model_tag: str) -> str:
    return f"{model_tag}__text_vectors"


def question_vectors_table(question_tag: str) -> str:
    return f"{question_tag}__question_vectors"


# Image vector rows carry the "dataset:split" sets their image belongs to, so a knowledge base of several
# datasets is one prefilter (`array_has_any`) however many datasets list the same bytes.
MEMBERSHIPS = [("memberships", pa.list_(pa.string()))]


def membership_label(dataset: str, split: str) -> str:
    return f"{dataset}:{split}"


def vector_schema(dim: int, key: str, extra: Iterable[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    """Schema of a vector table: its key, a fixed-size float32 `vector`, filter columns, and provenance."""
    return pa.schema(
        [(key, pa.string()), ("vector", pa.list_(pa.float32(), dim)), *extra]
        + [("model_tag", pa.string()), ("embedded_at", pa.timestamp("us", tz="UTC"))]
    )


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

    def read(self, name: str, columns: list[str] | None = None, where: str | None = None) -> pa.Table:
        """A whole table (or the rows matching a SQL `where`) as Arrow; empty when the table does not exist."""
        if not self.has(name):
            return pa.table({})
        query = self.table(name).search().limit(None)
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


def predictions_schema(item_fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """A predictions table: one row per (job, item), its retrieved neighbours and provenance.

    `pred_id` = hash(job_id, item key); a job id is derived from what the job computes, so rerunning a job
    skips or overwrites its rows, never duplicates them.
    """
    return pa.schema(
        [("pred_id", pa.string()), ("job_id", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
         ("member_id", pa.string()), ("image_id", pa.string()), *item_fields,
         ("variant", pa.string()), ("kb", pa.string()),  # the knowledge base searched: "dataset:split,..."
         ("neighbour_ids", pa.list_(pa.string())), ("neighbour_scores", pa.list_(pa.float32())),
         # KB images left out because they are the query's own bytes or a near-duplicate (leakage guard)
         ("near_duplicates", pa.int32()),
         ("model_tag", pa.string()),
         # What generated the prediction (`generators.generator_tag`, and its spec as JSON), the exact prompt its
         # model received (empty for the builtin answerers), and the KB's fingerprint when it was made.
         ("generator", pa.string()), ("generator_spec", pa.string()), ("prompt", pa.string()),
         ("kb_version", pa.string()),
         ("run_id", pa.string()),  # the orchestrator run that wrote the row (Prefect flow run id), for provenance
         ("created_at", pa.timestamp("us", tz="UTC"))]
    )


def read_lists(store: Store, table: str, schema: pa.Schema, key: str, column: str, ids: list[str]) -> dict:
    """key -> the non-empty list in `column` (every caption, every human answer) of these rows."""
    if not store.has(table) or not ids:
        return {}
    store.ensure_columns(table, schema)  # a store from before the column existed
    found = {}
    for part in chunks(sorted(set(ids))):
        rows = store.read(table, columns=[key, column], where=in_list(key, part))
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
