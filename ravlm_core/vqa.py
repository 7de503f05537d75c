"""The retrieval-augmented VQA job: items → image neighbours + neighbours' QA → answers → prediction rows."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ravlm_core.answerers import FusionAnswerer, FusionConfig, train_fusion, vote_answers
from ravlm_core.embed import text_id
from ravlm_core.knowledge import KnowledgeBase
from ravlm_core.retrieve import Neighbours, kb_filter, search, vectors_by_id
from ravlm_core.store import QA, QA_SCHEMA, Store, predictions_schema, sql_quote

VARIANTS = ("fusion", "fusion-no-retrieval", "voting")

PREDICTIONS_SCHEMA = predictions_schema(
    [("qa_id", pa.string()), ("image_id", pa.string()), ("question", pa.string()), ("question_type", pa.string()),
     ("answer", pa.string()), ("prediction", pa.string())]
)


@dataclass
class Retrieved:
    """What retrieval gives a batch of items (questions about images)."""

    image_vectors: np.ndarray  # float32 [n_items, d]
    question_vectors: np.ndarray  # float32 [n_items, dq], question encoder space
    question_index: np.ndarray  # int [n_items], matched KB question
    question_sim: np.ndarray  # float32 [n_items]
    neighbours: Neighbours  # per item: nearest KB images that were asked the matched question

    def context(self, kb: KnowledgeBase) -> np.ndarray:
        return kb.votes(self.neighbours, self.question_index, self.question_sim)


def read_items(store: Store, dataset: str, split: str, image_ids: list[str] | None = None) -> pd.DataFrame:
    """QA rows of a dataset split (optionally only for `image_ids`), in a stable order."""
    where = kb_filter(dataset, split)
    if image_ids is not None:
        if not image_ids:
            return QA_SCHEMA.empty_table().to_pandas()
        where += f" AND image_id IN ({', '.join(sql_quote(i) for i in image_ids)})"
    items = store.read(QA, where=where).to_pandas()
    return items.sort_values("qa_id", kind="stable").reset_index(drop=True) if not items.empty else items


def retrieve_for_items(store: Store, kb: KnowledgeBase, image_ids: list[str], questions: list[str], k: int,
                       leave_one_out: bool) -> Retrieved:
    """Look up the stored vectors of the items' images and questions, then retrieve (`retrieve_for_vectors`).

    `leave_one_out` keeps each item's own image out of its neighbours (items drawn from the KB itself).
    """
    image_vectors = vectors_by_id(store, kb.image_table, image_ids, "image_id")  # reads each distinct id once
    question_vectors = vectors_by_id(store, kb.question_table, [text_id(q) for q in questions], "text_id")
    return retrieve_for_vectors(store, kb, image_vectors, question_vectors, k,
                                exclude=image_ids if leave_one_out else None)


def retrieve_for_vectors(store: Store, kb: KnowledgeBase, image_vectors: np.ndarray, question_vectors: np.ndarray,
                         k: int, exclude: list[str] | None = None) -> Retrieved:
    """Per item: match its question to a KB question, then search the k nearest KB images asked that question.

    One batched search per distinct matched question, filtered to the images that were asked it.
    """
    question_index, question_sim = kb.match_questions(question_vectors)
    ids: list[list[str]] = [[] for _ in range(len(image_vectors))]
    scores: list[list[float]] = [[] for _ in range(len(image_vectors))]
    for q in np.unique(question_index):
        items = np.flatnonzero(question_index == q)
        candidates = kb.images_asked(int(q)) if q >= 0 else []
        if not candidates:
            continue
        where = f"{kb.where} AND image_id IN ({', '.join(sql_quote(i) for i in candidates)})"
        found = search(store, kb.image_table, image_vectors[items], k, where=where,
                       exclude=[exclude[i] for i in items] if exclude is not None else None)
        for item, item_ids, item_scores in zip(items, found.ids, found.scores):
            ids[item], scores[item] = item_ids, item_scores
    return Retrieved(image_vectors, question_vectors, question_index, question_sim, Neighbours(ids, scores))


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
    """Train (or reuse) a fusion answerer on the KB's own QA pairs, with leave-one-out retrieval."""
    config = config or FusionConfig()
    config = FusionConfig(**{**config.__dict__, "use_retrieval": use_retrieval})
    items = read_items(store, kb.dataset, kb.split)
    if items.empty:
        raise ValueError(f"{kb.dataset}/{kb.split} has no question-answer pairs to train an answerer on")
    retrieved = retrieve_for_items(store, kb, items["image_id"].tolist(), items["question"].tolist(), k, True)
    labels = np.array([kb.answer_index(a) for a in items["answer"]])
    return train_fusion(retrieved.image_vectors, retrieved.question_vectors, retrieved.context(kb), labels,
                        kb.answers, out_root, f"{kb.fingerprint}:k={k}", config, device)


def job_id(kind: str, dataset: str, split: str, variant: str, *parts: str) -> str:
    """A job's id is derived from what it computes, so rerunning the same job upserts the same rows."""
    digest = hashlib.blake2b("\x1f".join((kind, dataset, split, variant, *parts)).encode(), digest_size=8)
    return f"{kind}-{digest.hexdigest()}"


def pred_ids(job: str, keys: list[str]) -> list[str]:
    """Prediction row ids: one per (job, item), so a rerun of the job upserts the same rows."""
    return [hashlib.blake2b(f"{job}\x1f{key}".encode(), digest_size=16).hexdigest() for key in keys]


def prediction_rows(job: str, kb: KnowledgeBase, items: pd.DataFrame, retrieved: Retrieved,
                    predictions: list[str], variant: str, run_id: str = "") -> pa.Table:
    """The `vqa_predictions` rows of one job over `items`."""
    now = datetime.now(timezone.utc)
    uses_neighbours = variant != "fusion-no-retrieval"
    ids = retrieved.neighbours.ids if uses_neighbours else [[] for _ in range(len(items))]
    scores = retrieved.neighbours.scores if uses_neighbours else [[] for _ in range(len(items))]
    return pa.Table.from_pydict(
        {
            "pred_id": pred_ids(job, items["qa_id"].tolist()),
            "job_id": [job] * len(items),
            "dataset": items["dataset"].tolist(),
            "split": items["split"].tolist(),
            "qa_id": items["qa_id"].tolist(),
            "image_id": items["image_id"].tolist(),
            "question": items["question"].tolist(),
            "question_type": items["question_type"].tolist(),
            "answer": items["answer"].tolist(),
            "prediction": predictions,
            "variant": [variant] * len(items),
            "neighbour_ids": ids,
            "neighbour_scores": scores,
            "model_tag": [kb.model_tag] * len(items),
            "run_id": [run_id] * len(items),
            "created_at": [now] * len(items),
        },
        schema=PREDICTIONS_SCHEMA,
    )
