"""The knowledge base retrieval searches: one dataset split's images, their captions and QA pairs, as vectors."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ravlm_core.embed import text_id
from ravlm_core.retrieve import Neighbours, kb_filter, vectors_by_id
from ravlm_core.store import IMAGES, QA, Store, image_vectors_table, text_vectors_table

# Vote sharpness. MiniLM puts a question and its negation at ~0.97 cosine, so question similarity must be
# sharp (a 0.03 gap is a factor e^-6) or opposite answers mix; image similarity is softer.
QUESTION_TAU = 0.005
IMAGE_TAU = 0.05


@dataclass
class KnowledgeBase:
    dataset: str
    split: str
    model_tag: str
    answers: list[str]  # answer vocabulary, most frequent first
    questions: list[str]  # distinct KB questions
    question_vectors: np.ndarray  # float32 [n_questions, d]
    qa_by_image: dict[str, tuple[np.ndarray, np.ndarray]]  # image_id -> (question indices, answer indices)
    captions: dict[str, str]  # image_id -> caption
    fingerprint: str  # changes whenever the KB's content changes
    _answer_index: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def image_table(self) -> str:
        return image_vectors_table(self.model_tag)

    @property
    def text_table(self) -> str:
        return text_vectors_table(self.model_tag)

    @property
    def where(self) -> str:
        return kb_filter(self.dataset, self.split)

    def answer_index(self, answer: str) -> int:
        """Index of an answer in the vocabulary, -1 when the KB never saw it."""
        if not self._answer_index:
            self._answer_index = {a: i for i, a in enumerate(self.answers)}
        return self._answer_index.get(answer, -1)

    def votes(self, neighbours: Neighbours, rows: list[int], question_vectors: np.ndarray) -> np.ndarray:
        """Retrieval context per item: the neighbours' answers to the questions most like the item's.

        Args:
            neighbours: image neighbours, one entry per distinct item image.
            rows: for each item, its entry in `neighbours`.
            question_vectors: float32 [n_items, d], the items' questions.
        Returns:
            float32 [n_items, n_answers + 1]: a normalised answer histogram, then the best question similarity.
        """
        n_answers = len(self.answers)
        out = np.zeros((len(rows), n_answers + 1), np.float32)
        for item, row in enumerate(rows):
            q_idx, a_idx, img_sim = [], [], []
            for image_id, score in zip(neighbours.ids[row], neighbours.scores[row]):
                qs, ans = self.qa_by_image.get(image_id, (None, None))
                if qs is not None:
                    q_idx.append(qs)
                    a_idx.append(ans)
                    img_sim.append(np.full(len(qs), score, np.float32))
            if not q_idx:
                continue
            q_idx, a_idx, img_sim = np.concatenate(q_idx), np.concatenate(a_idx), np.concatenate(img_sim)
            q_sim = self.question_vectors[q_idx] @ question_vectors[item]
            weight = np.exp((q_sim - q_sim.max()) / QUESTION_TAU) * np.exp((img_sim - img_sim.max()) / IMAGE_TAU)
            hist = np.bincount(a_idx, weight, minlength=n_answers)
            out[item, :n_answers] = hist / hist.sum()
            out[item, n_answers] = q_sim.max()
        return out


def load_knowledge_base(store: Store, model_tag: str, dataset: str, split: str) -> KnowledgeBase:
    """Read one dataset split's QA pairs, captions and question vectors (embedded under `model_tag`).

    Raises:
        ValueError: the split holds no images (nothing to retrieve).
    """
    where = kb_filter(dataset, split)
    qa = store.read(QA, columns=["image_id", "question", "answer"], where=where).to_pandas()
    images = store.read(IMAGES, columns=["image_id", "caption"], where=where).to_pandas()
    if images.empty:
        raise ValueError(f"knowledge base {dataset}/{split} has no images: ingest that split first (ravlm ingest)")
    answers = qa["answer"].value_counts().index.tolist() if not qa.empty else []
    questions = sorted(qa["question"].unique().tolist()) if not qa.empty else []
    q_index = {q: i for i, q in enumerate(questions)}
    a_index = {a: i for i, a in enumerate(answers)}
    qa_by_image = {
        image_id: (group["question"].map(q_index).to_numpy(), group["answer"].map(a_index).to_numpy())
        for image_id, group in qa.groupby("image_id", sort=False)
    }
    vectors = vectors_by_id(store, text_vectors_table(model_tag), [text_id(q) for q in questions], "text_id")
    captions = {i: c for i, c in zip(images["image_id"], images["caption"]) if isinstance(c, str) and c}
    digest = hashlib.blake2b(digest_size=8)
    for part in (model_tag, dataset, split, *sorted(qa_by_image), *questions, *answers, *sorted(captions.items())):
        digest.update(str(part).encode() + b"\x1f")
    return KnowledgeBase(dataset, split, model_tag, answers, questions, vectors, qa_by_image, captions, digest.hexdigest())
