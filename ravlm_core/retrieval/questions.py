"""Question-conditioned retrieval for VQA: each item's question is matched to the closest KB question of the same
form, then the nearest KB images asked that question are its neighbours (plain image neighbours when the KB never
saw a question like it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ravlm_core.ids import text_id
from ravlm_core.retrieval.knowledge import KnowledgeBase
from ravlm_core.retrieval.search import Guard, Neighbours, search, stored_guard, vectors_by_id
from ravlm_core.store import Store, in_list


@dataclass
class Retrieved:
    """What retrieval gives a batch of items (questions about images)."""

    image_vectors: np.ndarray  # float32 [n_items, d]
    question_vectors: np.ndarray  # float32 [n_items, dq], question encoder space
    question_index: np.ndarray  # int [n_items], matched KB question
    question_sim: np.ndarray  # float32 [n_items]
    neighbours: Neighbours  # per item: nearest KB images asked the matched question (or plain image neighbours)

    def context(self, knowledge: KnowledgeBase) -> np.ndarray:
        return knowledge.votes(self.neighbours, self.question_index, self.question_sim, self.question_vectors)

    def allowed_answers(self, knowledge: KnowledgeBase) -> np.ndarray:
        """bool [n_items, n_answers]: the answers the KB ever gave the question matched to each item (a colour
        question takes colours, a yes/no question yes or no); all of them for an item that matched none."""
        given = np.zeros((len(knowledge.questions), len(knowledge.answers)), bool)
        for questions, answers in knowledge.qa_by_image.values():
            given[questions, answers] = True
        out = np.ones((len(self.question_index), len(knowledge.answers)), bool)
        matched = (self.question_index >= 0) & (self.question_sim >= knowledge.config.question_match_min)
        out[matched] = given[self.question_index[matched]]
        return out


def retrieve_for_items(store: Store, knowledge: KnowledgeBase, image_ids: list[str], questions: list[str], k: int,
                       training: bool = False) -> Retrieved:
    """Look up the stored vectors of the items' images and questions, then retrieve (`retrieve_for_vectors`).

    With the leakage guard on, each item's own image (its bytes, under any name or dataset) and its near-duplicates
    are never retrieved; `training` items (the KB's own) always leave their own image out.
    """
    image_vectors = vectors_by_id(store, knowledge.image_table, image_ids, "image_id")  # reads each distinct id once
    question_vectors = vectors_by_id(store, knowledge.question_table, [text_id(q) for q in questions], "text_id")
    guard = stored_guard(store, knowledge, image_ids)
    return retrieve_for_vectors(store, knowledge, image_vectors, question_vectors, k, questions,
                                exclude=image_ids if training and not guard.drop else None, guard=guard)


def retrieve_for_vectors(store: Store, knowledge: KnowledgeBase, image_vectors: np.ndarray,
                         question_vectors: np.ndarray, k: int, questions: list[str] | None = None,
                         exclude: list[str] | None = None, guard: Guard | None = None) -> Retrieved:
    """Per item: match its question to a KB question (by vector, and by form when `questions` gives the texts),
    then search the k nearest KB images asked that question.

    One batched search per distinct matched question, filtered to the images that were asked it. Items whose
    question matches no KB question closely (`kb.config.question_match_min`) get their plain nearest KB images.
    """
    n = len(image_vectors)
    question_index, question_sim = knowledge.match_questions(question_vectors, questions)
    fallback = question_sim < knowledge.config.question_match_min
    ids: list[list[str]] = [[] for _ in range(n)]
    scores: list[list[float]] = [[] for _ in range(n)]
    dropped = [0] * n
    groups = [(np.flatnonzero(fallback), None)] + [
        (np.flatnonzero((question_index == q) & ~fallback), int(q)) for q in np.unique(question_index[~fallback])]
    for items, q in groups:
        candidates = knowledge.images_asked(q) if q is not None and q >= 0 else None
        if not len(items) or candidates == []:
            continue
        where = knowledge.where if candidates is None else f"{knowledge.where} AND {in_list('image_id', candidates)}"
        found = search(store, knowledge.image_table, image_vectors[items], k, where=where,
                       exclude=[exclude[i] for i in items] if exclude is not None else None,
                       guard=_subset(guard, items), where_rows=None if candidates is None else len(candidates))
        for item, item_ids, item_scores, item_dropped in zip(items, found.ids, found.scores, found.guarded):
            ids[item], scores[item], dropped[item] = item_ids, item_scores, item_dropped
    return Retrieved(image_vectors, question_vectors, question_index, question_sim, Neighbours(ids, scores, dropped))


def _subset(guard: Guard | None, items: np.ndarray) -> Guard | None:
    if guard is None:
        return None
    return Guard([guard.own_ids[i] for i in items], [guard.signatures[i] for i in items], guard.max_distance,
                 guard.drop)


def no_neighbours(n: int) -> Retrieved:
    empty = np.zeros((n, 0), np.float32)
    return Retrieved(empty, empty, np.full(n, -1), np.zeros(n, np.float32),
                     Neighbours.none(n))
