"""Every table of the store, its name and its schema, in one place (`Store` in store.py reads and writes them).

Schemas only grow: `Store.ensure_columns` adds a newer release's columns to an older store's tables."""
from __future__ import annotations

from typing import Iterable

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

# The Parquet content shards (data/parquet/content/images-<hash>.parquet): the full bytes beside these columns.
SHARD_SCHEMA = pa.schema(
    [("image_id", pa.string()), ("image", pa.binary()),
     *(f for f in CONTENTS_SCHEMA if f.name not in ("image_id", "shard"))]
)


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


TEXT_VECTOR_COLUMNS = [("text", pa.string())]


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
         # KB images the leakage guard left out (the query's own bytes or a near-duplicate of them): `guarded` in
         # the code; the column keeps its first name so that every stored job stays readable.
         ("near_duplicates", pa.int32()),
         ("model_tag", pa.string()),
         # What generated the prediction (`generators.generator_tag`, and its spec as JSON), the exact prompt its
         # model received (empty for the builtin answerers), and the KB's fingerprint when it was made.
         ("generator", pa.string()), ("generator_spec", pa.string()), ("prompt", pa.string()),
         ("kb_version", pa.string()),
         ("run_id", pa.string()),  # the orchestrator run that wrote the row (Prefect flow run id), for provenance
         ("created_at", pa.timestamp("us", tz="UTC"))]
    )


VQA_PREDICTIONS_SCHEMA = predictions_schema(
    [("qa_id", pa.string()), ("question", pa.string()), ("question_type", pa.string()),
     ("answer", pa.string()), ("prediction", pa.string())]
)

CAPTION_PREDICTIONS_SCHEMA = predictions_schema([("prediction", pa.string()), ("reference", pa.string())])

EVAL_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("task", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("metrics", pa.string()),  # JSON: the nested results printed by `ravlm eval --json`
        ("config", pa.string()),  # JSON
        ("report", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)

# Flow runs, written by the flows' hooks, so `ravlm status` needs no Prefect server.
RUNS = "runs"
RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),  # the orchestrator's flow run id
        ("flow", pa.string()),
        ("name", pa.string()),  # the flow run's readable name
        ("state", pa.string()),  # COMPLETED, FAILED, CRASHED, CANCELLED
        ("message", pa.string()),  # one line: what failed, or what the run did
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("seconds", pa.float64()),
    ]
)

# The vector index's measured quality per table (index/ann.py's recall gate).
INDEX_QUALITY = "index_quality"
QUALITY_SCHEMA = pa.schema(
    [
        ("table_name", pa.string()),
        ("index_type", pa.string()),
        ("num_partitions", pa.int64()),
        ("nprobes", pa.int64()),
        ("refine_factor", pa.int64()),  # 0: none
        ("recall_at_10", pa.float64()),  # of the chosen setting, on `queries` stored vectors
        ("target_recall", pa.float64()),
        ("p50_ms", pa.float64()),  # one query at a time, chosen setting
        ("queries", pa.int64()),
        ("rows_indexed", pa.int64()),
        ("trained_rows", pa.int64()),  # rows when the partitions were last trained
        ("index_uuid", pa.string()),  # the index segments measured, comma-separated: the base first, then deltas
        ("action", pa.string()),  # built, appended, measured
        ("build_s", pa.float64()),  # time of that action
        ("measured_at", pa.timestamp("us", tz="UTC")),
    ]
)
