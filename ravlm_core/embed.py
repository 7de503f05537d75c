"""Embed one Parquet shard: read rows the store lacks → encode in batches → upsert image and text vectors."""
from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ravlm_core.store import Store, image_vectors_table, text_vectors_table, vector_schema

log = logging.getLogger(__name__)

IMAGE_FILTER_COLUMNS = [("dataset", pa.string()), ("split", pa.string())]
TEXT_COLUMNS = [("text", pa.string())]


def text_id(text: str) -> str:
    """Texts are keyed by content, so a question asked of 300 images is embedded once."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


@dataclass
class EmbedResult:
    shard: str
    new_images: int
    new_texts: int
    read_s: float
    encode_s: float
    write_s: float


def shard_texts(shard_path: str) -> list[str]:
    """Distinct captions and questions of one shard, in first-seen order."""
    table = pq.read_table(shard_path, columns=["caption", "qa"])
    texts = [c for c in table.column("caption").to_pylist() if c]
    for pairs in table.column("qa").to_pylist():
        texts.extend(p["question"] for p in pairs or [])
    return list(dict.fromkeys(texts))


def _image_batches(shard_path: str, image_ids: set[str], batch_size: int) -> Iterator[tuple[pa.Table, list[Image.Image]]]:
    """Reader: the shard's rows whose id is in `image_ids`, decoded, `batch_size` at a time."""
    columns = ["image_id", "dataset", "split", "image"]
    for batch in pq.ParquetFile(shard_path).iter_batches(batch_size=batch_size, columns=columns):
        rows = pa.Table.from_batches([batch])
        keep = [i for i, image_id in enumerate(rows.column("image_id").to_pylist()) if image_id in image_ids]
        if not keep:
            continue
        rows = rows.take(keep)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in rows.column("image").to_pylist()]
        yield rows.drop_columns(["image"]), images


def _vector_rows(keys: dict[str, list], vectors: np.ndarray, model_tag: str, schema: pa.Schema) -> pa.Table:
    now = datetime.now(timezone.utc)
    columns = dict(keys)
    columns["vector"] = list(vectors.astype(np.float32))
    columns["model_tag"] = [model_tag] * len(vectors)
    columns["embedded_at"] = [now] * len(vectors)
    return pa.Table.from_pydict(columns, schema=schema)


def embed_shard(store: Store, encoder, shard_path: str, batch_size: int = 64) -> EmbedResult:
    """Embed the images and texts of one shard that `encoder.tag`'s tables do not hold yet.

    Idempotent: ids already stored are skipped, so a rerun (or a crash, then a rerun) does only the missing work.
    Image vectors are committed one batch at a time, so an interrupted shard keeps what it finished.
    """
    image_table = image_vectors_table(encoder.tag)
    text_table = text_vectors_table(encoder.tag)
    image_schema = vector_schema(encoder.dim, "image_id", IMAGE_FILTER_COLUMNS)
    text_schema = vector_schema(encoder.dim, "text_id", TEXT_COLUMNS)
    timings = {"read": 0.0, "encode": 0.0, "write": 0.0}

    shard_ids = pq.read_table(shard_path, columns=["image_id"]).column("image_id").to_pylist()
    missing_images = set(shard_ids) - store.existing_ids(image_table, "image_id", shard_ids)
    new_images = 0
    tick = time.perf_counter()
    for rows, images in _image_batches(shard_path, missing_images, batch_size):
        timings["read"] += time.perf_counter() - tick
        tick = time.perf_counter()
        vectors = encoder.embed_images(images)
        timings["encode"] += time.perf_counter() - tick
        tick = time.perf_counter()
        keys = {name: rows.column(name).to_pylist() for name in ("image_id", "dataset", "split")}
        new_images += store.upsert(image_table, _vector_rows(keys, vectors, encoder.tag, image_schema), "image_id")
        timings["write"] += time.perf_counter() - tick
        tick = time.perf_counter()

    texts = shard_texts(shard_path)
    known_texts = store.existing_ids(text_table, "text_id", [text_id(t) for t in texts])
    todo = [t for t in texts if text_id(t) not in known_texts]
    new_texts = 0
    for start in range(0, len(todo), batch_size * 4):
        chunk = todo[start : start + batch_size * 4]
        tick = time.perf_counter()
        vectors = encoder.embed_texts(chunk)
        timings["encode"] += time.perf_counter() - tick
        tick = time.perf_counter()
        keys = {"text_id": [text_id(t) for t in chunk], "text": chunk}
        new_texts += store.upsert(text_table, _vector_rows(keys, vectors, encoder.tag, text_schema), "text_id")
        timings["write"] += time.perf_counter() - tick

    log.info("embedded %s: %d images, %d texts; read %.1fs encode %.1fs write %.1fs", shard_path, new_images,
             new_texts, timings["read"], timings["encode"], timings["write"])
    return EmbedResult(shard_path, new_images, new_texts, timings["read"], timings["encode"], timings["write"])
