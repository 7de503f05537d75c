"""Bulk retrieval-augmented jobs over one Parquet shard: read items → retrieve + answer/caption → upsert rows."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache

import pyarrow as pa
import pyarrow.parquet as pq

from ravlm_core.answerers import FusionAnswerer
from ravlm_core.captioning import consensus_captions, direct_captions
from ravlm_core.embed import text_id
from ravlm_core.knowledge import KnowledgeBase, load_knowledge_base
from ravlm_core.retrieve import search, vectors_by_id
from ravlm_core.store import (CAPTION_PREDICTIONS, IMAGES, QA, VQA_PREDICTIONS, Store, image_vectors_table,
                              predictions_schema, question_vectors_table, sql_quote,
                              text_vectors_table)
from ravlm_core.vqa import answer, pred_ids, prediction_rows, read_items, retrieve_for_items

log = logging.getLogger(__name__)

CAPTION_VARIANTS = ("consensus", "direct")

CAPTION_SCHEMA = predictions_schema(
    [("image_id", pa.string()), ("prediction", pa.string()), ("reference", pa.string())]
)


@dataclass
class JobResult:
    job_id: str
    shard: str
    n_items: int
    n_new: int


def cached_knowledge_base(store_uri: str, model_tag: str, question_tag: str, dataset: str, split: str) -> KnowledgeBase:
    """The KB, loaded once per process while its tables are unchanged (not once per shard task)."""
    store = Store(store_uri)
    tables = (IMAGES, QA, image_vectors_table(model_tag), text_vectors_table(model_tag),
              question_vectors_table(question_tag))
    versions = tuple(store.table(t).version if store.has(t) else 0 for t in tables)
    return _knowledge_base(store_uri, model_tag, question_tag, dataset, split, versions)


@lru_cache(maxsize=4)
def _knowledge_base(store_uri: str, model_tag: str, question_tag: str, dataset: str, split: str,
                    versions: tuple) -> KnowledgeBase:
    return load_knowledge_base(Store(store_uri), model_tag, question_tag, dataset, split)


def _shard_meta(shard_path: str) -> tuple[list[str], str, list[str | None]]:
    """A shard's image ids, its split (one per shard), and captions."""
    table = pq.read_table(shard_path, columns=["image_id", "split", "caption"])
    splits = set(table.column("split").to_pylist())
    if len(splits) != 1:
        raise ValueError(f"shard {shard_path} mixes splits {sorted(splits)}; re-ingest it (shards hold one split)")
    return table.column("image_id").to_pylist(), splits.pop(), table.column("caption").to_pylist()


def run_vqa_shard(store: Store, kb: KnowledgeBase, shard_path: str, job: str, variant: str, k: int,
                  answerer_dir: str | None = None, device: str = "cpu", run_id: str = "") -> JobResult:
    """Answer the questions about one shard's images that `job` has not answered yet."""
    image_ids, split, _ = _shard_meta(shard_path)
    items = read_items(store, kb.dataset, split, image_ids)
    done = store.existing_ids(VQA_PREDICTIONS, "qa_id", where=f"job_id = {sql_quote(job)}")
    items = items[~items["qa_id"].isin(done)].reset_index(drop=True)
    if items.empty:
        return JobResult(job, shard_path, 0, 0)
    retrieved = retrieve_for_items(store, kb, items["image_id"].tolist(), items["question"].tolist(), k,
                                   leave_one_out=split == kb.split)
    answerer = FusionAnswerer(answerer_dir, device) if answerer_dir else None
    rows = prediction_rows(job, kb, items, retrieved, answer(kb, retrieved, variant, answerer), variant, run_id)
    n_new = store.upsert(VQA_PREDICTIONS, rows, "pred_id")
    log.info("vqa[%s] %s: %d questions", variant, shard_path, len(items))
    return JobResult(job, shard_path, len(items), n_new)


def run_caption_shard(store: Store, kb: KnowledgeBase, shard_path: str, job: str, variant: str, k: int,
                      run_id: str = "") -> JobResult:
    """Caption the images of one shard that `job` has not captioned yet."""
    image_ids, split, references = _shard_meta(shard_path)
    done = store.existing_ids(CAPTION_PREDICTIONS, "image_id", where=f"job_id = {sql_quote(job)}")
    todo = [(i, r) for i, r in zip(image_ids, references) if i not in done]
    if not todo:
        return JobResult(job, shard_path, 0, 0)
    ids = [i for i, _ in todo]
    image_vectors = vectors_by_id(store, kb.image_table, ids, "image_id")
    kb_captions = sorted(set(kb.captions.values()))
    caption_vectors = vectors_by_id(store, kb.text_table, [text_id(c) for c in kb_captions], "text_id")
    if variant == "consensus":
        neighbours = search(store, kb.image_table, image_vectors, k, where=kb.where,
                            exclude=ids if split == kb.split else None)
        predictions = consensus_captions(neighbours, kb.captions, dict(zip(kb_captions, caption_vectors)))
        neighbour_ids, neighbour_scores = neighbours.ids, neighbours.scores
    elif variant == "direct":
        predictions = direct_captions(image_vectors, kb_captions, caption_vectors)
        neighbour_ids, neighbour_scores = [[] for _ in ids], [[] for _ in ids]
    else:
        raise ValueError(f"unknown caption variant {variant!r}; choose one of {CAPTION_VARIANTS}")
    now = datetime.now(timezone.utc)
    rows = pa.Table.from_pydict(
        {
            "pred_id": pred_ids(job, ids), "job_id": [job] * len(ids), "dataset": [kb.dataset] * len(ids),
            "split": [split] * len(ids), "image_id": ids, "prediction": predictions,
            "reference": [r for _, r in todo], "variant": [variant] * len(ids), "neighbour_ids": neighbour_ids,
            "neighbour_scores": neighbour_scores, "model_tag": [kb.model_tag] * len(ids),
            "run_id": [run_id] * len(ids), "created_at": [now] * len(ids),
        },
        schema=CAPTION_SCHEMA,
    )
    n_new = store.upsert(CAPTION_PREDICTIONS, rows, "pred_id")
    log.info("caption[%s] %s: %d images", variant, shard_path, len(ids))
    return JobResult(job, shard_path, len(ids), n_new)
