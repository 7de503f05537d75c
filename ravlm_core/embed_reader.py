"""Embedding's reader: a content shard's wanted rows → decoded, preprocessed pixel batches, inline or in reader
processes. Light on purpose (pyarrow, PIL, numpy; no LanceDB, no torch), so a reader process starts in a fraction
of a second."""
from __future__ import annotations

import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ravlm_core.errors import UserError
from ravlm_core.imaging import ImageRejected, decode_image


def reader_workers(device: str) -> int:
    """Decode processes that suit `device`: none on a CPU, where the model's threads already use every core (the
    bench measured readers there costing as much as they overlap), several beside a GPU, which a single decoding
    process cannot keep fed."""
    return 0 if not str(device).startswith("cuda") else max(1, min(8, (os.cpu_count() or 2) - 1))


def row_groups(shard_path: str) -> list:
    metadata = pq.ParquetFile(shard_path).metadata
    return [metadata.row_group(group) for group in range(metadata.num_row_groups)]


def wanted_rows(group_rows: list[int], ids: list[str], wanted: set[str]) -> list[tuple[int, list[int]]]:
    """(row group, [row offsets in it]) of the shard rows whose id is in `wanted`; groups with none are left out."""
    plan, start = [], 0
    for group, rows in enumerate(group_rows):
        keep = [offset for offset in range(rows) if ids[start + offset] in wanted]
        if keep:
            plan.append((group, keep))
        start += rows
    return plan


def read_pixels(shard_path: str, group: int, rows: list[int], preprocess) -> tuple[list[str], np.ndarray]:
    """Reader, one unit: rows `rows` of row group `group`, decoded and preprocessed into one array.

    Module-level and given only small arguments, so a reader process can run it: the image bytes never cross a
    pipe, only the preprocessed pixels come back."""
    table = pq.ParquetFile(shard_path).read_row_group(group, columns=["image_id", "image"])
    ids, blobs = table.column("image_id"), table.column("image")
    return ([ids[i].as_py() for i in rows],
            np.stack([preprocess(_decoded(shard_path, ids[i].as_py(), blobs[i].as_py())) for i in rows]))


def _decoded(shard_path: str, image_id: str, blob: bytes) -> Image.Image:
    """Ingest decoded every image before writing it, so one that fails here means the shard file was damaged."""
    try:
        return decode_image(blob).image
    except ImageRejected as err:
        raise UserError(f"shard {shard_path} is damaged: image {image_id} cannot be decoded ({err}); delete the "
                        f"shard and run `ravlm ingest` on its source again, which writes it anew") from None


_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()  # the thread runner embeds several shards of one process at once


def _reader_pool(workers: int) -> ProcessPoolExecutor:
    """One pool of reader processes per size, kept for the life of the process (starting one costs ~1 s).

    forkserver, not fork: the parent runs Prefect's and LanceDB's threads, which a forked child would inherit
    mid-lock."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
        return _POOLS[workers]


def _pixel_chunks(shard_path: str, plan, preprocess, workers: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """The reader over a whole shard, in shard order: inline, or `workers` processes with 2 units each in flight
    (prefetch), so at most that many row groups of pixels wait in memory."""
    if workers <= 0:
        for group, rows in plan:
            yield read_pixels(shard_path, group, rows, preprocess)
        return
    pool, in_flight = _reader_pool(workers), deque()
    for group, rows in plan:
        in_flight.append(pool.submit(read_pixels, shard_path, group, rows, preprocess))
        if len(in_flight) >= 2 * workers:
            yield in_flight.popleft().result()
    while in_flight:
        yield in_flight.popleft().result()


def _batches(chunks: Iterator[tuple[list[str], np.ndarray]], size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """Regroup the reader's row-group chunks into batches of `size` (the last may be shorter), copied into one
    reused buffer instead of a new array per batch. A batch is only valid until the next one is asked for."""
    buffer, ids = None, []
    for chunk_ids, pixels in chunks:
        if buffer is None:
            buffer = np.empty((size, *pixels.shape[1:]), pixels.dtype)
        taken = 0
        while taken < len(chunk_ids):
            n = min(size - len(ids), len(chunk_ids) - taken)
            buffer[len(ids) : len(ids) + n] = pixels[taken : taken + n]
            ids += chunk_ids[taken : taken + n]
            taken += n
            if len(ids) == size:
                yield ids, buffer
                ids = []
    if ids:
        yield ids, buffer[: len(ids)]


def pixel_batches(shard_path: str, plan, preprocess, size: int, workers: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """The reader of one shard: (ids, pixels [n, ...]) batches of `size` in shard order, for the rows `plan`
    names (`wanted_rows`), each image decoded and passed through `preprocess`."""
    return _batches(_pixel_chunks(shard_path, plan, preprocess, workers), size)
