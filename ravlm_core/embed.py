"""Embedding: each content shard's images that listings use and vectors lack (read → encode → upsert), then texts."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from ravlm_core.imaging import ImageRejected, decode_image
from ravlm_core.membership import memberships_of
from ravlm_core.errors import UserError, first_line
from ravlm_core.store import (ACTIVE, IMAGES, MEMBERSHIPS, QA, Store, image_vectors_table, in_list, question_vectors_table,
                              text_vectors_table, vector_schema)

log = logging.getLogger(__name__)

TEXT_COLUMNS = [("text", pa.string())]
# Rows per LanceDB commit: each commit is a table version and a fragment, so committing every small encode batch
# would leave thousands of tiny fragments; a crash loses at most this many rows of work.
WRITE_ROWS = 512


def text_id(text: str) -> str:
    """Texts are keyed by content, so a question asked of 300 images is embedded once."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


@dataclass
class EmbedResult:
    shard: str
    new_images: int
    read_s: float
    encode_s: float
    write_s: float


@dataclass
class TextEmbedResult:
    new_texts: int
    new_questions: int
    encode_s: float
    write_s: float


def listed_texts(store: Store, datasets: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Distinct captions and distinct questions of the listed images (of `datasets`, or all), sorted."""
    where = ACTIVE if not datasets else f"{ACTIVE} AND {in_list('dataset', datasets)}"
    captions = store.read(IMAGES, columns=["caption"], where=f"{where} AND caption IS NOT NULL")
    questions = store.read(QA, columns=["question"], where=where)
    as_list = lambda table, column: table.column(column).to_pylist() if table.num_rows else []  # noqa: E731
    return sorted(set(as_list(captions, "caption"))), sorted(set(as_list(questions, "question")))


def _image_batches(shard_path: str, image_ids: set[str], batch_size: int) -> Iterator[tuple[list[str], list[Image.Image]]]:
    """Reader: the shard's images whose id is in `image_ids`, normalised as the thumbnails, `batch_size` at a time."""
    for batch in pq.ParquetFile(shard_path).iter_batches(batch_size=batch_size, columns=["image_id", "image"]):
        ids = batch.column(0).to_pylist()
        keep = [i for i, image_id in enumerate(ids) if image_id in image_ids]
        if keep:
            blobs = batch.column(1)
            yield [ids[i] for i in keep], [_decoded(shard_path, ids[i], blobs[i].as_py()) for i in keep]


def _decoded(shard_path: str, image_id: str, blob: bytes) -> Image.Image:
    """Ingest decoded every image before writing it, so one that fails here means the shard file was damaged."""
    try:
        return decode_image(blob).image
    except ImageRejected as err:
        raise UserError(f"shard {shard_path} is damaged: image {image_id} cannot be decoded ({err}); delete the "
                        f"shard and run `ravlm ingest` on its source again, which writes it anew") from None


def _vector_rows(keys: dict[str, list], vectors: np.ndarray, model_tag: str, schema: pa.Schema) -> pa.Table:
    now = datetime.now(timezone.utc)
    columns = dict(keys)
    columns["vector"] = list(vectors.astype(np.float32))
    columns["model_tag"] = [model_tag] * len(vectors)
    columns["embedded_at"] = [now] * len(vectors)
    return pa.Table.from_pydict(columns, schema=schema)


def embed_shard(store: Store, encoder, shard_path: str, batch_size: int = 64) -> EmbedResult:
    """Embed the images of one content shard that some dataset lists and `encoder.tag`'s image table lacks.

    Idempotent: ids already stored are skipped, so a rerun (or a crash, then a rerun) does only the missing work.
    Image vectors are committed every WRITE_ROWS rows, so an interrupted shard keeps what it finished. Each row
    carries the "dataset:split" sets listing its image (kept true by ingest afterwards).
    """
    image_table = image_vectors_table(encoder.tag)
    image_schema = vector_schema(encoder.dim, "image_id", MEMBERSHIPS)
    timings = {"read": 0.0, "encode": 0.0, "write": 0.0}

    try:
        shard_ids = pq.read_table(shard_path, columns=["image_id"]).column("image_id").to_pylist()
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"shard {shard_path} cannot be read ({first_line(err) or type(err).__name__}): run `ravlm ingest` on "
                        f"its source again, which writes its images anew") from None
    labels = memberships_of(store, shard_ids)  # images no dataset lists any more are not embedded
    missing_images = set(labels) - store.existing_ids(image_table, "image_id", shard_ids)
    new_images = 0
    pending: list[pa.Table] = []

    def flush() -> int:
        tick = time.perf_counter()
        written = store.upsert(image_table, pa.concat_tables(pending), "image_id") if pending else 0
        pending.clear()
        timings["write"] += time.perf_counter() - tick
        return written

    bar = tqdm(total=len(missing_images), desc=f"embed {Path(shard_path).name}", unit="img", mininterval=5)
    tick = time.perf_counter()
    for ids, images in _image_batches(shard_path, missing_images, batch_size):
        bar.update(len(images))
        timings["read"] += time.perf_counter() - tick
        tick = time.perf_counter()
        vectors = encoder.embed_images(images)
        timings["encode"] += time.perf_counter() - tick
        keys = {"image_id": ids, "memberships": [labels[i] for i in ids]}
        pending.append(_vector_rows(keys, vectors, encoder.tag, image_schema))
        if sum(t.num_rows for t in pending) >= WRITE_ROWS:
            new_images += flush()
        tick = time.perf_counter()
    new_images += flush()
    bar.close()

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
    schema = vector_schema(encoder.dim, "text_id", TEXT_COLUMNS)
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
