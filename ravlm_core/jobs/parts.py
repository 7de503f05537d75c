"""Parts of a query set and what every job part shares (the KB and the model generator, loaded once per process;
the requests a model generator gets).

A query set is a (dataset, split) of listed images, labelled or not; it is cut into parts by ranges of member id
(hashes, so parts are even), which is all a task is given: no item lists travel between tasks.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

from ravlm_core.contents import read_images, read_thumbnails
from ravlm_core.errors import UserError
from ravlm_core.generators import GenerationJob, GeneratorSpec, Request, load_generator
from ravlm_core.locations import local_model
from ravlm_core.model_files import timed_load
from ravlm_core.retrieval.knowledge import KBRef, KnowledgeBase, RetrievalConfig, load_knowledge_base
from ravlm_core.retrieval.search import kb_filter, vectors_by_id
from ravlm_core.schemas import ACTIVE, IMAGES, QA, image_vectors_table, question_vectors_table, text_vectors_table
from ravlm_core.store import Store, sql_quote

log = logging.getLogger(__name__)

# Member ids are hex hashes: parts are ranges of their first four hex digits.
ID_SPACE = 16**4
_LOADING = threading.Lock()


@dataclass
class JobResult:
    job_id: str
    part: str
    n_items: int
    n_new: int
    guarded: int  # items with at least one KB image left out by the leakage guard


def check_query_set(store: Store, dataset: str, split: str) -> int:
    """How many listed images the query set has; none is a user error naming the sets the store does hold."""
    n = store.count(IMAGES, kb_filter(dataset, split))
    if n == 0:
        rows = store.read(IMAGES, columns=["dataset", "split"], where=ACTIVE) if store.has(IMAGES) else None
        held = sorted({f"{d}:{s}" for d, s in zip(*(rows.column(c).to_pylist() for c in ("dataset", "split")))}) if rows else []
        raise UserError(f"query set {dataset}:{split} has no images: ingest it first (ravlm ingest) or pick one of: "
                        f"{', '.join(held) or 'none, the store is empty'}")
    return n


def query_parts(store: Store, dataset: str, split: str, part_size: int) -> list[str]:
    """The query set cut into about `part_size` listed images per part, as "lo:hi" member id ranges."""
    n = check_query_set(store, dataset, split)
    parts = max(1, min(ID_SPACE, -(-n // max(1, part_size))))
    bounds = [f"{i * ID_SPACE // parts:04x}" for i in range(parts)] + ["g"]  # "g" sorts after every hex digit
    return [f"{lo}:{hi}" for lo, hi in zip(bounds, bounds[1:])]


def part_range(part: str) -> tuple[str, str]:
    lo, hi = part.split(":")
    return lo, hi


def part_members(store: Store, dataset: str, split: str, part: str) -> pd.DataFrame:
    lo, hi = part_range(part)
    where = f"{kb_filter(dataset, split)} AND member_id >= '{lo}' AND member_id < '{hi}'"
    rows = store.read(IMAGES, columns=["member_id", "image_id", "dataset", "split", "caption"], where=where)
    frame = rows.to_pandas() if rows.num_rows else pd.DataFrame(columns=["member_id", "image_id", "dataset", "split",
                                                                         "caption"])
    return frame.astype(object).where(frame.notna(), None).sort_values("member_id").reset_index(drop=True)


def left_to_do(store: Store, table: str, key: str, items: pd.DataFrame, job: GenerationJob) -> pd.DataFrame:
    """The items `job` has no prediction row for yet (by `key`): a rerun, or a run resumed after a crash, does
    only those."""
    done = store.existing_ids(table, key, where=f"job_id = {sql_quote(job.job_id)}")
    return items[~items[key].isin(done)].reset_index(drop=True)


def cached_knowledge_base(store_uri: str, model_tag: str, question_tag: str, kb: KBRef,
                          config: RetrievalConfig) -> KnowledgeBase:
    """The knowledge base `kb` names, loaded once per process while its tables are unchanged (not once per part)."""
    store = Store(store_uri)
    tables = (IMAGES, QA, image_vectors_table(model_tag), text_vectors_table(model_tag),
              question_vectors_table(question_tag))
    versions = tuple(store.table(t).version if store.has(t) else 0 for t in tables)
    return _knowledge_base(store_uri, model_tag, question_tag, kb, config, versions)


@lru_cache(maxsize=4)
def _knowledge_base(store_uri: str, model_tag: str, question_tag: str, kb: KBRef, config: RetrievalConfig,
                    versions: tuple) -> KnowledgeBase:
    return load_knowledge_base(Store(store_uri), model_tag, question_tag, list(kb.sets), config)


def cached_generator(spec: GeneratorSpec, model_dir: str | None, device: str):
    """One loaded model per process, reused by every part the process runs (threads wait for the first load)."""
    with _LOADING:
        return _load(spec, model_dir, device)


@lru_cache(maxsize=2)
def _load(spec: GeneratorSpec, model_dir: str | None, device: str):
    if model_dir:
        spec = GeneratorSpec.from_fields({**spec.fields(), "model": local_model(model_dir)})
    return timed_load(f"generator {spec.kind} {spec.model}", lambda: load_generator(spec, device=device))


def model_requests(store: Store, knowledge: KnowledgeBase, generator, image_ids: list[str],
                   questions: list[str | None], contexts: list[list[dict]], context_images: int) -> list[Request]:
    """The batch's requests: pixels (or, for a generator that reads vectors, the KB encoder's image vectors)."""
    if getattr(generator, "needs_pixels", True):
        images = read_images(store, image_ids)
        pixels, vectors = [images[i] for i in image_ids], [None] * len(image_ids)
    else:
        vectors = list(vectors_by_id(store, knowledge.image_table, image_ids, "image_id"))
        pixels = [None] * len(image_ids)
    if context_images:
        shown = [n["image_id"] for context in contexts for n in context[:context_images]]
        thumbnails = read_thumbnails(store, shown)
        for context in contexts:
            for n in context[:context_images]:
                n["image"] = thumbnails.get(n["image_id"])
    return [Request(p, q, c, v) for p, q, c, v in zip(pixels, questions, contexts, vectors)]


def batches(frame: pd.DataFrame, size: int):
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size].reset_index(drop=True)


def log_batch(task: str, job: GenerationJob, n: int, started: float, read: float) -> None:
    done = time.perf_counter()
    log.info("%s[%s] %d items: read+retrieve %.1fs, generate %.1fs (%.2f items/s)", task, job.tag, n,
             read - started, done - read, n / max(done - read, 1e-9))
