"""The retrieval-augmented VQA job: items → KB neighbours + their QA → answers → prediction rows."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ravlm_core.jobs.answerers import FusionAnswerer, FusionConfig, fusion_dir, train_fusion, vote_answers
from ravlm_core.embed.shards import text_id
from ravlm_core.errors import UserError
from ravlm_core.generators import GenerationJob
from ravlm_core.retrieval.knowledge import KnowledgeBase
from ravlm_core.retrieval.search import Guard, Neighbours, search, sets_filter, signatures_of, vectors_by_id
from ravlm_core.store import QA, QA_SCHEMA, Store, in_list, predictions_schema

VARIANTS = ("fusion", "fusion-no-retrieval", "voting")
ITEM_COLUMNS = ["qa_id", "member_id", "image_id", "dataset", "split", "question", "answer", "question_type"]

PREDICTIONS_SCHEMA = predictions_schema(
    [("qa_id", pa.string()), ("question", pa.string()), ("question_type", pa.string()),
     ("answer", pa.string()), ("prediction", pa.string())]
)


@dataclass
class Retrieved:
    """What retrieval gives a batch of items (questions about images)."""

    image_vectors: np.ndarray  # float32 [n_items, d]
    question_vectors: np.ndarray  # float32 [n_items, dq], question encoder space
    question_index: np.ndarray  # int [n_items], matched KB question
    question_sim: np.ndarray  # float32 [n_items]
    neighbours: Neighbours  # per item: nearest KB images asked the matched question (or plain image neighbours)

    def context(self, kb: KnowledgeBase) -> np.ndarray:
        return kb.votes(self.neighbours, self.question_index, self.question_sim, self.question_vectors)


def read_items(store: Store, sets: list[tuple[str, str]], member_range: tuple[str, str] | None = None,
               labelled: bool = False) -> pd.DataFrame:
    """QA rows of the listed images of these sets (optionally one member id range), in a stable order."""
    where = sets_filter(sets)
    if member_range is not None:
        where += f" AND member_id >= '{member_range[0]}' AND member_id < '{member_range[1]}'"
    if labelled:
        where += " AND answer IS NOT NULL"
    items = store.read(QA, columns=ITEM_COLUMNS, where=where)
    if not items.num_rows:
        return QA_SCHEMA.empty_table().select(ITEM_COLUMNS).to_pandas()
    # Arrow → pandas keeps missing text as None (not NaN), so optional columns survive the round trip.
    items = items.to_pandas().astype(object).where(lambda frame: frame.notna(), None)
    return items.sort_values("qa_id", kind="stable").reset_index(drop=True)


def retrieve_for_items(store: Store, kb: KnowledgeBase, image_ids: list[str], questions: list[str], k: int,
                       training: bool = False) -> Retrieved:
    """Look up the stored vectors of the items' images and questions, then retrieve (`retrieve_for_vectors`).

    With the leakage guard on, each item's own image (its bytes, under any name or dataset) and its near-duplicates
    are never retrieved; `training` items (the KB's own) always leave their own image out.
    """
    image_vectors = vectors_by_id(store, kb.image_table, image_ids, "image_id")  # reads each distinct id once
    question_vectors = vectors_by_id(store, kb.question_table, [text_id(q) for q in questions], "text_id")
    guard = stored_guard(store, kb, image_ids)
    return retrieve_for_vectors(store, kb, image_vectors, question_vectors, k, questions,
                                exclude=image_ids if training and not guard.drop else None, guard=guard)


def stored_guard(store: Store, kb: KnowledgeBase, image_ids: list[str]) -> Guard:
    """The leakage guard for stored images: their own ids and pixel signatures."""
    signatures = signatures_of(store, image_ids)
    return Guard(image_ids, [signatures.get(i) for i in image_ids], kb.config.near_duplicate_distance,
                 drop=kb.config.leakage_guard)


def retrieve_for_vectors(store: Store, kb: KnowledgeBase, image_vectors: np.ndarray, question_vectors: np.ndarray,
                         k: int, questions: list[str] | None = None, exclude: list[str] | None = None,
                         guard: Guard | None = None) -> Retrieved:
    """Per item: match its question to a KB question (by vector, and by form when `questions` gives the texts),
    then search the k nearest KB images asked that question.

    One batched search per distinct matched question, filtered to the images that were asked it. Items whose
    question matches no KB question closely (`kb.config.question_match_min`) get their plain nearest KB images.
    """
    n = len(image_vectors)
    question_index, question_sim = kb.match_questions(question_vectors, questions)
    fallback = question_sim < kb.config.question_match_min
    ids: list[list[str]] = [[] for _ in range(n)]
    scores: list[list[float]] = [[] for _ in range(n)]
    dropped = [0] * n
    groups = [(np.flatnonzero(fallback), None)] + [
        (np.flatnonzero((question_index == q) & ~fallback), int(q)) for q in np.unique(question_index[~fallback])]
    for items, q in groups:
        candidates = kb.images_asked(q) if q is not None and q >= 0 else None
        if not len(items) or candidates == []:
            continue
        where = kb.where if candidates is None else f"{kb.where} AND {in_list('image_id', candidates)}"
        found = search(store, kb.image_table, image_vectors[items], k, where=where,
                       exclude=[exclude[i] for i in items] if exclude is not None else None,
                       guard=_subset(guard, items), where_rows=None if candidates is None else len(candidates))
        for item, item_ids, item_scores, item_dropped in zip(items, found.ids, found.scores, found.near_duplicates):
            ids[item], scores[item], dropped[item] = item_ids, item_scores, item_dropped
    return Retrieved(image_vectors, question_vectors, question_index, question_sim, Neighbours(ids, scores, dropped))


def _subset(guard: Guard | None, items: np.ndarray) -> Guard | None:
    if guard is None:
        return None
    return Guard([guard.own_ids[i] for i in items], [guard.signatures[i] for i in items], guard.max_distance, guard.drop)


def answer(kb: KnowledgeBase, retrieved: Retrieved, variant: str, answerer: FusionAnswerer | None) -> list[str]:
    """Answers for each item by `variant` (one of VARIANTS)."""
    context = retrieved.context(kb)
    if variant == "voting":
        return vote_answers(context, kb.answers)
    if answerer is None:
        raise ValueError(f"variant {variant!r} needs a trained fusion answerer")
    return answerer.predict(retrieved.image_vectors, retrieved.question_vectors, context)


def train_answerer(store: Store, kb: KnowledgeBase, k: int, out_root: Path, use_retrieval: bool,
                   device: str = "cpu", config: FusionConfig | None = None) -> Path:
    """Train (or reuse) a fusion answerer on the KB's own QA pairs, retrieving for each as inference will:
    never its own image or a near-duplicate of it."""
    config = _with_retrieval(config, use_retrieval)
    trained = trained_answerer(kb, k, out_root, use_retrieval, config)
    if trained is not None:  # looked up before retrieving for every KB question: nights stay idle
        return trained
    items = read_items(store, kb.sets, labelled=True)
    if items.empty:
        raise UserError(f"knowledge base {kb.label} has no question-answer pairs to train an answerer on: ingest "
                        f"its dataset with questions, or name another with --kb")
    retrieved = retrieve_for_items(store, kb, items["image_id"].tolist(), items["question"].tolist(), k, training=True)
    labels = np.array([kb.answer_index(a) for a in items["answer"]])
    return train_fusion(retrieved.image_vectors, retrieved.question_vectors, retrieved.context(kb), labels,
                        kb.answers, out_root, f"{kb.fingerprint}:k={k}", config, device)


def trained_answerer(kb: KnowledgeBase, k: int, out_root: Path, use_retrieval: bool,
                     config: FusionConfig | None = None) -> Path | None:
    """The folder of the fusion answerer already trained for this KB, k and config; None when there is none."""
    trained = fusion_dir(out_root, f"{kb.fingerprint}:k={k}", _with_retrieval(config, use_retrieval))
    return trained if (trained / "weights.safetensors").exists() else None


def _with_retrieval(config: FusionConfig | None, use_retrieval: bool) -> FusionConfig:
    return FusionConfig(**{**(config or FusionConfig()).__dict__, "use_retrieval": use_retrieval})


def job_id(kind: str, dataset: str, split: str, variant: str, *parts: str) -> str:
    """A job's id is derived from what it computes, so rerunning the same job upserts the same rows."""
    digest = hashlib.blake2b("\x1f".join((kind, dataset, split, variant, *parts)).encode(), digest_size=8)
    return f"{kind}-{digest.hexdigest()}"


def pred_ids(job: str, keys: list[str]) -> list[str]:
    """Prediction row ids: one per (job, item), so a rerun of the job upserts the same rows."""
    return [hashlib.blake2b(f"{job}\x1f{key}".encode(), digest_size=16).hexdigest() for key in keys]


def prediction_rows(job: GenerationJob, kb: KnowledgeBase, items: pd.DataFrame, retrieved: Retrieved,
                    predictions: list[str], run_id: str = "", prompts: list[str] | None = None) -> pa.Table:
    """The `vqa_predictions` rows of one job over `items`: what its generator answered, and the prompts its model
    received (empty for the builtin answerers)."""
    n = len(items)
    now = datetime.now(timezone.utc)
    uses_neighbours = job.use_retrieval
    empty = [[] for _ in range(n)]
    columns = {name: items[name].tolist() for name in ITEM_COLUMNS}
    return pa.Table.from_pydict(
        {
            **columns,
            "pred_id": pred_ids(job.job_id, columns["qa_id"]),
            "job_id": [job.job_id] * n,
            "prediction": predictions,
            "variant": [job.variant] * n,
            "kb": [kb.label] * n,
            "neighbour_ids": retrieved.neighbours.ids if uses_neighbours else empty,
            "neighbour_scores": retrieved.neighbours.scores if uses_neighbours else empty,
            "near_duplicates": retrieved.neighbours.near_duplicates if uses_neighbours else [0] * n,
            "model_tag": [kb.model_tag] * n,
            "generator": [job.tag] * n,
            "generator_spec": [job.spec_json()] * n,
            "prompt": prompts or [""] * n,
            "kb_version": [kb.fingerprint] * n,
            "run_id": [run_id] * n,
            "created_at": [now] * n,
        },
        schema=PREDICTIONS_SCHEMA,
    )
