"""Bulk retrieval-augmented jobs over one part of a query set: read items → retrieve + answer/caption → upsert rows.

A query set is a (dataset, split) of listed images, labelled or not; it is cut into parts by ranges of member id
(hashes, so parts are even), which is all a task is given: no item lists travel between tasks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd

from ravlm_core.jobs.answerers import FusionAnswerer
from ravlm_core.jobs.captioning import caption_rows, consensus_captions, direct_captions
from ravlm_core.embed.shards import text_id
from ravlm_core.errors import UserError
from ravlm_core.jobs.generate import generate_captions, generate_vqa
from ravlm_core.generators import MODEL_KINDS, GenerationJob
from ravlm_core.retrieval.knowledge import KBRef, KnowledgeBase, RetrievalConfig, load_knowledge_base
from ravlm_core.locations import local_model
from ravlm_core.ingest.membership import qa_id_of
from ravlm_core.embed.pinning import timed_load
from ravlm_core.retrieval.search import Neighbours, kb_filter, search, vectors_by_id
from ravlm_core.store import (ACTIVE, CAPTION_PREDICTIONS, IMAGES, QA, VQA_PREDICTIONS, Store, image_vectors_table,
                              question_vectors_table, sql_quote, text_vectors_table)
from ravlm_core.jobs.vqa import ITEM_COLUMNS, answer, prediction_rows, read_items, retrieve_for_items, stored_guard

log = logging.getLogger(__name__)

# Member ids are hex hashes: parts are ranges of their first four hex digits.
ID_SPACE = 16**4


@dataclass
class JobResult:
    job_id: str
    part: str
    n_items: int
    n_new: int
    near_duplicates: int  # items with at least one KB image left out by the leakage guard


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


def _range(part: str) -> tuple[str, str]:
    lo, hi = part.split(":")
    return lo, hi


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


def _members(store: Store, dataset: str, split: str, part: str) -> pd.DataFrame:
    lo, hi = _range(part)
    where = f"{kb_filter(dataset, split)} AND member_id >= '{lo}' AND member_id < '{hi}'"
    rows = store.read(IMAGES, columns=["member_id", "image_id", "dataset", "split", "caption"], where=where)
    frame = rows.to_pandas() if rows.num_rows else pd.DataFrame(columns=["member_id", "image_id", "dataset", "split",
                                                                         "caption"])
    return frame.astype(object).where(frame.notna(), None).sort_values("member_id").reset_index(drop=True)


def vqa_items(store: Store, dataset: str, split: str, part: str, questions: list[str] | None = None) -> pd.DataFrame:
    """The part's items: its QA pairs, or with `questions` (an unlabeled set) every question for every image."""
    if questions is None:
        return read_items(store, [(dataset, split)], _range(part))
    members = _members(store, dataset, split, part)
    rows = [{"qa_id": qa_id_of(m.member_id, m.image_id, q, None, None), "member_id": m.member_id,
             "image_id": m.image_id, "dataset": m.dataset, "split": m.split, "question": q, "answer": None,
             "question_type": None} for m in members.itertuples() for q in questions]
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


def run_vqa_part(store: Store, kb: KnowledgeBase, dataset: str, split: str, part: str, job: GenerationJob, k: int,
                 device: str = "cpu", run_id: str = "", questions: list[str] | None = None) -> JobResult:
    """Answer the questions about one part's images that `job` has not answered yet."""
    items = vqa_items(store, dataset, split, part, questions)
    done = store.existing_ids(VQA_PREDICTIONS, "qa_id", where=f"job_id = {sql_quote(job.job_id)}")
    items = items[~items["qa_id"].isin(done)].reset_index(drop=True)
    if items.empty:
        return JobResult(job.job_id, part, 0, 0, 0)
    if job.spec.kind in MODEL_KINDS:
        n_new, near = generate_vqa(store, kb, items, job, k, device, run_id)
    else:
        retrieved = retrieve_for_items(store, kb, items["image_id"].tolist(), items["question"].tolist(), k)
        answerer = None
        if job.spec.kind == "builtin-fusion":
            answerer = timed_load(f"fusion answerer {job.model_dir}", lambda: FusionAnswerer(local_model(job.model_dir), device))
        predictions = answer(kb, retrieved, job.variant, answerer)
        rows = prediction_rows(job, kb, items, retrieved, predictions, run_id)
        n_new = store.upsert(VQA_PREDICTIONS, rows, "pred_id")
        near = sum(n > 0 for n in retrieved.neighbours.near_duplicates)
    log.info("vqa[%s] %s/%s part %s: %d questions, %d with a near-duplicate left out", job.variant, dataset, split,
             part, len(items), near)
    return JobResult(job.job_id, part, len(items), n_new, near)


def run_caption_part(store: Store, kb: KnowledgeBase, dataset: str, split: str, part: str, job: GenerationJob,
                     k: int, device: str = "cpu", run_id: str = "") -> JobResult:
    """Caption the images of one part that `job` has not captioned yet."""
    members = _members(store, dataset, split, part)
    done = store.existing_ids(CAPTION_PREDICTIONS, "member_id", where=f"job_id = {sql_quote(job.job_id)}")
    members = members[~members["member_id"].isin(done)].reset_index(drop=True)
    if members.empty:
        return JobResult(job.job_id, part, 0, 0, 0)
    if job.spec.kind in MODEL_KINDS:
        n_new, near = generate_captions(store, kb, members, job, k, device, run_id)
    else:
        neighbours, predictions = _transfer_captions(store, kb, members["image_id"].tolist(), k, job.use_retrieval)
        rows = caption_rows(job, kb, members, neighbours, predictions, run_id)
        n_new = store.upsert(CAPTION_PREDICTIONS, rows, "pred_id")
        near = sum(x > 0 for x in neighbours.near_duplicates)
    log.info("caption[%s] %s/%s part %s: %d images", job.variant, dataset, split, part, len(members))
    return JobResult(job.job_id, part, len(members), n_new, near)


def _transfer_captions(store: Store, kb: KnowledgeBase, image_ids: list[str], k: int,
                       use_retrieval: bool) -> tuple[Neighbours, list[str]]:
    """Consensus caption transfer from the neighbours; without retrieval, the KB caption closest to the image."""
    image_vectors = vectors_by_id(store, kb.image_table, image_ids, "image_id")
    kb_captions = sorted(set(kb.captions.values()))
    caption_vectors = vectors_by_id(store, kb.text_table, [text_id(c) for c in kb_captions], "text_id")
    if not use_retrieval:
        n = len(image_ids)
        return (Neighbours([[] for _ in range(n)], [[] for _ in range(n)], [0] * n),
                direct_captions(image_vectors, kb_captions, caption_vectors))
    neighbours = search(store, kb.image_table, image_vectors, k, where=kb.where,
                        guard=stored_guard(store, kb, image_ids))
    return neighbours, consensus_captions(neighbours, kb.captions, dict(zip(kb_captions, caption_vectors)))
