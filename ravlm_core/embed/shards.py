"""Embedding: each content shard's images that listings use and vectors lack (read → encode → upsert), then texts."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ravlm_core.embed.reader import pixel_batches, row_groups, wanted_rows
from ravlm_core.errors import UserError, first_line
from ravlm_core.ids import text_id
from ravlm_core.ingest.membership import memberships_of
from ravlm_core.schemas import (
    ACTIVE,
    IMAGES,
    IMAGES_SCHEMA,
    MEMBERSHIPS,
    QA,
    TEXT_VECTOR_COLUMNS,
    image_vectors_table,
    question_vectors_table,
    text_vectors_table,
    vector_schema,
)
from ravlm_core.store import Store, in_list
from ravlm_core.writer import BatchedWriter

log = logging.getLogger(__name__)

# A LanceDB commit every WRITE_ROWS rows or WRITE_SECONDS of work, whichever comes first: each commit is a table
# version and a fragment (committing every small encode batch would leave thousands of tiny fragments, and each
# merge costs ~15 ms), and a crash loses at most that much work, however slow the model.
WRITE_ROWS = 2048
WRITE_SECONDS = 10.0


@dataclass
class EmbedResult:
    shard: str
    new_images: int
    read_s: float  # time the encoder waited for the reader thread or processes, whose work overlaps its own
    encode_s: float
    write_s: float


@dataclass
class TextEmbedResult:
    new_texts: int
    new_questions: int
    encode_s: float
    write_s: float


def listed_texts(store: Store, datasets: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Distinct captions (every one of each listing: `caption` and all of `captions`) and distinct questions of the
    listed images (of `datasets`, or all), sorted."""
    where = ACTIVE if not datasets else f"{ACTIVE} AND {in_list('dataset', datasets)}"
    listings = store.read(IMAGES, columns=["caption", "captions"], where=where, schema=IMAGES_SCHEMA)
    questions = store.read(QA, columns=["question"], where=where)
    as_list = lambda table, column: table.column(column).to_pylist() if table.num_rows else []  # noqa: E731
    captions = {c for c in as_list(listings, "caption") if c}
    captions.update(c for several in as_list(listings, "captions") for c in several or () if c)
    return sorted(captions), sorted(set(as_list(questions, "question")))


def _vector_rows(keys: dict[str, list], vectors: np.ndarray, model_tag: str, schema: pa.Schema) -> pa.Table:
    now = datetime.now(timezone.utc)
    columns = dict(keys)
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])  # no per-row Python objects
    columns["model_tag"] = [model_tag] * len(vectors)
    columns["embedded_at"] = [now] * len(vectors)
    return pa.Table.from_pydict(columns, schema=schema)


def embed_shard(store: Store, encoder, shard_path: str, batch_size: int | None = None,
                workers: int = 0) -> EmbedResult:
    """Embed the images of one content shard that some dataset lists and `encoder.tag`'s image table lacks.

    Reader → mapper → writer: row groups are decoded and preprocessed (`encoder.preprocess`, inline or in
    `workers` reader processes), regrouped into batches of `batch_size` (default: the encoder's, measured on a
    CPU), encoded (`encoder.embed_pixels`) and committed every WRITE_ROWS rows or WRITE_SECONDS. Memory holds a few
    row groups of pixels and WRITE_ROWS vectors, however big the shard or the collection.

    Idempotent: ids already stored are skipped, so a rerun (or a crash, then a rerun) does only the missing work.
    An interrupted shard keeps what it committed. Each row carries the "dataset:split" sets listing its image (kept
    true by ingest afterwards).
    """
    image_table = image_vectors_table(encoder.tag)
    image_schema = vector_schema(encoder.dim, "image_id", MEMBERSHIPS)
    timings = {"read": 0.0, "encode": 0.0, "write": 0.0}

    try:
        shard_ids = pq.read_table(shard_path, columns=["image_id"]).column("image_id").to_pylist()
        group_rows = [group.num_rows for group in row_groups(shard_path)]
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"shard {shard_path} cannot be read ({first_line(err) or type(err).__name__}): run `ravlm ingest` on "
                        f"its source again, which writes its images anew") from None
    labels = memberships_of(store, shard_ids)  # images no dataset lists any more are not embedded
    missing_images = set(labels) - store.existing_ids(image_table, "image_id", shard_ids)
    plan = wanted_rows(group_rows, shard_ids, missing_images)
    writer = BatchedWriter(store, image_table, "image_id", rows=WRITE_ROWS, seconds=WRITE_SECONDS)
    if plan:
        batches = pixel_batches(shard_path, plan, encoder.preprocess, batch_size or encoder.batch_size, workers)
        bar = tqdm(total=len(missing_images), desc=f"embed {Path(shard_path).name}", unit="img", mininterval=5)
        tick = time.perf_counter()
        with writer:
            for ids, pixels in batches:
                timings["read"] += time.perf_counter() - tick
                tick = time.perf_counter()
                vectors = encoder.embed_pixels(pixels)
                timings["encode"] += time.perf_counter() - tick
                keys = {"image_id": ids, "memberships": [labels[i] for i in ids]}
                writer.add(_vector_rows(keys, vectors, encoder.tag, image_schema))
                bar.update(len(ids))
                tick = time.perf_counter()
        bar.close()
    new_images, timings["write"] = writer.new_rows, writer.write_s

    log.info("embedded %s: %d images; read %.1fs encode %.1fs write %.1fs", shard_path, new_images,
             timings["read"], timings["encode"], timings["write"])
    return EmbedResult(shard_path, new_images, timings["read"], timings["encode"], timings["write"])


def embed_texts(store: Store, encoder, datasets: list[str] | None = None, batch_size: int = 256,
                question_encoder=None, extra_questions: list[str] = ()) -> TextEmbedResult:
    """Embed the distinct captions and questions of the listed images (of `datasets`) that the text tables lack.

    One call for all datasets, after the images: the same question is asked of images in many shards, and two
    tasks upserting the same new text at once would each insert it (LanceDB merges do not conflict on
    concurrent inserts of one key). Captions and questions go to the shared space (text search, caption
    transfer); questions also go to the question encoder's space, where negations stay apart.
    `extra_questions` (e.g. from `--questions FILE`) are embedded beside them.
    """
    captions, questions = listed_texts(store, datasets)
    questions = list(dict.fromkeys([*questions, *extra_questions]))
    timings = {"encode": 0.0, "write": 0.0}
    new_texts = _embed_new_texts(store, encoder, text_vectors_table(encoder.tag),
                                 list(dict.fromkeys(captions + questions)), batch_size, timings)
    new_questions = 0
    if question_encoder is not None:
        new_questions = _embed_new_texts(store, question_encoder, question_vectors_table(question_encoder.tag),
                                         questions, batch_size, timings)
    log.info("embedded %d new texts, %d new questions; encode %.1fs write %.1fs", new_texts, new_questions,
             timings["encode"], timings["write"])
    return TextEmbedResult(new_texts, new_questions, timings["encode"], timings["write"])


def _embed_new_texts(store: Store, encoder, table: str, texts: list[str], batch_size: int, timings: dict) -> int:
    """Embed the texts `table` lacks (keyed by content hash) and upsert them; returns how many were new."""
    schema = vector_schema(encoder.dim, "text_id", TEXT_VECTOR_COLUMNS)
    known = store.existing_ids(table, "text_id", [text_id(t) for t in texts])
    todo = [t for t in texts if text_id(t) not in known]
    new = 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        tick = time.perf_counter()
        vectors = encoder.embed_texts(chunk)
        timings["encode"] += time.perf_counter() - tick
        tick = time.perf_counter()
        keys = {"text_id": [text_id(t) for t in chunk], "text": chunk}
        new += store.upsert(table, _vector_rows(keys, vectors, encoder.tag, schema), "text_id")
        timings["write"] += time.perf_counter() - tick
    return new
