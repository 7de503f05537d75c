"""Embedding's reader: a content shard's wanted rows → decoded, preprocessed pixel batches, in a reader thread or
in reader processes. Light on purpose (pyarrow, PIL, numpy; no LanceDB; torch only once a "bicubic-torch" resize
runs), so a reader process starts in a fraction of a second."""
from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ravlm_core.errors import UserError
from ravlm_core.imaging import ImageRejected, decode_image


def reader_workers(device: str) -> int:
    """Decode processes that suit `device`: none on a CPU, where the model's threads already use every core (the
    bench measured a reader process there costing more than it overlaps; one reader thread serves instead),
    several beside a GPU, which a single decoding process cannot keep fed."""
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
    images = [_decoded(shard_path, ids[i].as_py(), blobs[i].as_py()) for i in rows]
    many = getattr(preprocess, "many", None)  # a whole row group at once where the preprocessing batches
    return [ids[i].as_py() for i in rows], many(images) if many else np.stack([preprocess(i) for i in images])


def _decoded(shard_path: str, image_id: str, blob: bytes) -> Image.Image:
    """Ingest verified and decoded every image before writing it, so the reader only decodes (`verify=False`, the
    same pixels), and an image that fails here means the shard file was damaged."""
    try:
        return decode_image(blob, verify=False).image
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
            _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                                                  initializer=_one_thread_each)
        return _POOLS[workers]


def _one_thread_each() -> None:
    """A reader process resizes with at most one thread (torch's, for "bicubic-torch"): the readers are already
    one per core, and torch would otherwise start a thread per core in each of them."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # the forkserver may have imported it with the parent's main module
        sys.modules["torch"].set_num_threads(1)


def _pixel_chunks(shard_path: str, plan, preprocess, workers: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """The reader over a whole shard, in shard order: `workers` processes, or with 0 one thread (decode and resize
    release the GIL, so it works while the model runs), with 2 units per reader in flight (prefetch): at most that
    many row groups of pixels wait in memory."""
    thread = ThreadPoolExecutor(1, thread_name_prefix="embed-reader") if workers <= 0 else None
    pool, depth, in_flight = thread or _reader_pool(workers), 2 * max(1, workers), deque()
    try:
        for group, rows in plan:
            in_flight.append(pool.submit(read_pixels, shard_path, group, rows, preprocess))
            if len(in_flight) >= depth:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:  # also when the consumer stops early or a unit failed: drop what has not started
        for unit in in_flight:
            unit.cancel()
        if thread:
            thread.shutdown(wait=False)


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
