"""The knowledge base retrieval searches: one dataset split's images, their captions and QA pairs, as vectors.

VQA context is retrieved per (image, question): the item's question is matched to the closest KB question, and
the neighbours are the nearest KB images that were asked *that* question. Matching questions among whatever
image neighbours happen to hold goes wrong whenever the exact question is missing there: MiniLM puts "is there
a blue shape?" closer to "is there not a blue shape?" (0.97) than to "is there a blue shape in the image?"
(0.94), so the vote would flip. A match over all KB questions finds the exact one whenever the KB has it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ravlm_core.embed import text_id
from ravlm_core.retrieve import Neighbours, kb_filter, vectors_by_id
from ravlm_core.store import IMAGES, QA, Store, image_vectors_table, question_vectors_table, text_vectors_table

# How sharply closer neighbours outvote farther ones (softmax temperature over cosine similarity).
IMAGE_TAU = 0.05
# Part of every KB fingerprint: bump it when retrieval or `votes` change meaning, so job ids and trained
# answerers that depend on them are recomputed rather than reused.
CONTEXT_VERSION = "question-conditioned-1"


@dataclass
class KnowledgeBase:
    dataset: str
    split: str
    model_tag: str
    question_tag: str  # question encoder: question vectors live in its own space (see encoders/questions.py)
    answers: list[str]  # answer vocabulary, most frequent first
    questions: list[str]  # distinct KB questions
    question_vectors: np.ndarray  # float32 [n_questions, dq], question encoder space
    qa_by_image: dict[str, tuple[np.ndarray, np.ndarray]]  # image_id -> (question indices, answer indices)
    captions: dict[str, str]  # image_id -> caption
    fingerprint: str  # changes whenever the KB's content changes
    _answer_index: dict[str, int] = field(default_factory=dict, repr=False)
    _images_by_question: dict[int, list[str]] = field(default_factory=dict, repr=False)

    @property
    def image_table(self) -> str:
        return image_vectors_table(self.model_tag)

    @property
    def text_table(self) -> str:
        return text_vectors_table(self.model_tag)

    @property
    def question_table(self) -> str:
        return question_vectors_table(self.question_tag)

    @property
    def where(self) -> str:
        return kb_filter(self.dataset, self.split)

    def answer_index(self, answer: str) -> int:
        """Index of an answer in the vocabulary, -1 when the KB never saw it."""
        if not self._answer_index:
            self._answer_index = {a: i for i, a in enumerate(self.answers)}
        return self._answer_index.get(answer, -1)

    def match_questions(self, question_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each item question (float32 [n, dq]), the most similar KB question: (index [n], cosine [n])."""
        if not self.questions:
            return np.full(len(question_vectors), -1), np.zeros(len(question_vectors), np.float32)
        sims = question_vectors @ self.question_vectors.T  # [n, n_questions]
        best = sims.argmax(1)
        return best, sims[np.arange(len(best)), best]

    def votes(self, neighbours: Neighbours, question_index: np.ndarray, question_sim: np.ndarray) -> np.ndarray:
        """Retrieval context per item: what its neighbours answered to the KB question matched to it.

        Args:
            neighbours: per item, KB images that were asked its matched question (see `vqa.retrieve_for_vectors`).
            question_index: int [n_items], the matched KB question of each item.
            question_sim: float32 [n_items], how close that match is (1.0: the same question).
        Returns:
            float32 [n_items, n_answers + 1]: the answer histogram weighted by image similarity (softmax at
            IMAGE_TAU, summing to 1), then the question match similarity.
        """
        n_answers = len(self.answers)
        out = np.zeros((len(question_index), n_answers + 1), np.float32)
        for item, (ids, scores) in enumerate(zip(neighbours.ids, neighbours.scores)):
            answers, sims = [], []
            for image_id, score in zip(ids, scores):
                questions, image_answers = self.qa_by_image.get(image_id, (np.empty(0, int), np.empty(0, int)))
                for answer in image_answers[questions == question_index[item]]:
                    answers.append(answer)
                    sims.append(score)
            if answers:
                sims = np.asarray(sims, np.float32)
                hist = np.bincount(answers, np.exp((sims - sims.max()) / IMAGE_TAU), minlength=n_answers)
                out[item, :n_answers] = hist / hist.sum()
            out[item, n_answers] = question_sim[item]
        return out

    def images_asked(self, question_index: int) -> list[str]:
        """KB images that have a QA pair with this KB question."""
        if not self._images_by_question:
            for image_id, (questions, _) in self.qa_by_image.items():
                for q in set(questions.tolist()):
                    self._images_by_question.setdefault(q, []).append(image_id)
        return self._images_by_question.get(question_index, [])


def load_knowledge_base(store: Store, model_tag: str, question_tag: str, dataset: str, split: str) -> KnowledgeBase:
    """Read one dataset split's QA pairs, captions and question vectors (embedded under `question_tag`).

    Raises:
        ValueError: the split holds no images (nothing to retrieve).
    """
    where = kb_filter(dataset, split)
    qa = store.read(QA, columns=["image_id", "question", "answer"], where=where).to_pandas()
    images = store.read(IMAGES, columns=["image_id", "caption"], where=where).to_pandas()
    if images.empty:
        raise ValueError(f"knowledge base {dataset}/{split} has no images: ingest that split first (ravlm ingest), "
                         "or pick another with --kb-split")
    answers = qa["answer"].value_counts().index.tolist() if not qa.empty else []
    questions = sorted(qa["question"].unique().tolist()) if not qa.empty else []
    q_index = {q: i for i, q in enumerate(questions)}
    a_index = {a: i for i, a in enumerate(answers)}
    qa_by_image = {
        image_id: (group["question"].map(q_index).to_numpy(), group["answer"].map(a_index).to_numpy())
        for image_id, group in qa.groupby("image_id", sort=False)
    }
    vectors = vectors_by_id(store, question_vectors_table(question_tag), [text_id(q) for q in questions], "text_id")
    captions = {i: c for i, c in zip(images["image_id"], images["caption"]) if isinstance(c, str) and c}
    digest = hashlib.blake2b(digest_size=8)
    parts = (CONTEXT_VERSION, IMAGE_TAU, model_tag, question_tag, dataset, split, *sorted(qa_by_image), *questions,
             *answers, *sorted(captions.items()))
    for part in parts:
        digest.update(str(part).encode() + b"\x1f")
    return KnowledgeBase(dataset, split, model_tag, question_tag, answers, questions, vectors, qa_by_image, captions,
                         digest.hexdigest())
