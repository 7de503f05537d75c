"""The knowledge base retrieval searches: one or more (dataset, split) sets' images, captions and QA pairs.

VQA context is retrieved per (image, question): the item's question is matched to the closest KB question, and
the neighbours are the nearest KB images that were asked *that* question. Matching questions among whatever
image neighbours happen to hold goes wrong whenever the exact question is missing there: MiniLM puts "is there
a blue shape?" closer to "is there not a blue shape?" (0.97) than to "is there a blue shape in the image?"
(0.94), so the vote would flip. A match over all KB questions finds the exact one whenever the KB has it.

When the KB does not have it (another dataset's wording), the closest KB question by cosine is often its
negation: benchmarks/cross_kb.py measured "does the picture lack a red shape?" matched to "is there a red shape?"
at 0.78-0.93, inverting 18% of cross-KB answers. So a question is only matched to KB questions of the same form
(`question_form`: yes/no or open, negated or not) whenever the KB has any of that form.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ravlm_core.config import Settings
from ravlm_core.errors import UserError
from ravlm_core.ids import text_id
from ravlm_core.retrieval.search import Neighbours, sets_filter, vector_sets_filter, vectors_by_id
from ravlm_core.schemas import (
    IMAGES,
    IMAGES_SCHEMA,
    QA,
    image_vectors_table,
    question_vectors_table,
    text_vectors_table,
)
from ravlm_core.store import Store

# How sharply closer neighbours outvote farther ones (softmax temperature over cosine similarity).
IMAGE_TAU = 0.05
# In the fallback (no close KB question), how sharply a neighbour's QA pair counts by its question's similarity.
QUESTION_TAU = 0.05
# Part of every KB fingerprint: bump it when retrieval or `votes` change meaning, so job ids and trained
# answerers that depend on them are recomputed rather than reused.
CONTEXT_VERSION = "answer-masks-4"


def _setting(name: str):
    """The declared default of a `Settings` field: the one place retrieval's numbers live."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class RetrievalConfig:
    """How retrieval treats a query; part of the KB fingerprint (by its repr), so a change recomputes jobs and
    answerers. Runs build it from their settings (`retrieval_config`); the field defaults are `Settings`'s."""

    # Below this cosine to its closest KB question, a query's question counts as new: its context comes from
    # plain image neighbours and all their QA pairs (weighted by question similarity) instead.
    question_match_min: float = _setting("question_match_min")
    # Leakage guard: a query never retrieves its own bytes (under any name or dataset), nor KB images whose
    # 16x16 pixel signature is within this many grey levels of its own (re-encodes, resizes, small edits).
    # Off, such hits are still counted but kept; answerers train leave-one-out either way.
    leakage_guard: bool = _setting("leakage_guard")
    near_duplicate_distance: float = _setting("near_duplicate_distance")
    # Match a question only to KB questions of its own form (`question_form`); English wording rules, so a
    # setting for collections asked in other languages.
    match_question_form: bool = _setting("match_question_form")


def retrieval_config(settings: Settings) -> RetrievalConfig:
    """The retrieval settings of a `Settings`."""
    return RetrievalConfig(question_match_min=settings.question_match_min, leakage_guard=settings.leakage_guard,
                           near_duplicate_distance=settings.near_duplicate_distance,
                           match_question_form=settings.match_question_form)


# Words that open a yes/no question in English, and words that negate one.
_AUXILIARIES = frozenset("is are am was were do does did has have had can could will would shall should may might "
                         "must".split())
_NEGATION = re.compile(r"\b(?:not|no|never|none|nothing|lacks?|lacking|without|other than)\b|n't\b")


def question_form(question: str) -> tuple[bool, bool]:
    """(is a yes/no question, is negated). Two questions of different forms never take each other's answers:
    "is the shape not red?" answered with the votes for "is the shape red?" is exactly wrong."""
    text = question.lower().replace("\u2019", "'").strip()
    first = text.split(maxsplit=1)[0] if text else ""
    return first in _AUXILIARIES or first.endswith("n't"), bool(_NEGATION.search(text))


@dataclass(frozen=True)
class KBRef:
    """Which knowledge base: the (dataset, split) sets searched together, in the order named, each once.

    Parsed once from `--kb DATASET[:SPLIT]` values (`parse_kb`) and handed as it is from the flow to its tasks
    and to the library, where `load_knowledge_base` reads what it names into a `KnowledgeBase`. Frozen and made
    of tuples, so it is its own cache key and pickles for Dask / Ray workers."""

    sets: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        """`dataset:split,...`: how reports, prediction rows and the KB fingerprint name it."""
        return kb_label(self.sets)

    def to_json(self) -> list[str]:
        """The `--kb` spelling, `["dataset:split", ...]`, for flow parameters; `parse_kb` reads it back unchanged."""
        return [f"{dataset}:{split}" for dataset, split in self.sets]


def parse_kb(specs: list[str] | None, query_dataset: str, default_split: str) -> KBRef:
    """`--kb DATASET[:SPLIT]` values as a `KBRef`; none means the query dataset, a missing split `default_split`
    (`Settings.kb_split`)."""
    sets = []
    for spec in specs or [query_dataset]:
        dataset, _, split = spec.partition(":")
        if not dataset:
            raise UserError(f"--kb {spec!r}: write DATASET or DATASET:SPLIT, e.g. --kb easy-vqa:train")
        sets.append((dataset, split or default_split))
    return KBRef(tuple(dict.fromkeys(sets)))


def kb_label(sets: Iterable[tuple[str, str]]) -> str:
    """`dataset:split,...` of (dataset, split) pairs; part of the KB fingerprint, so its spelling is fixed."""
    return ",".join(f"{d}:{s}" for d, s in sets)


@dataclass
class KnowledgeBase:
    """A knowledge base loaded for retrieval: what a `KBRef` names, read under one encoder's tables (callers
    that hold both call this one `knowledge`)."""

    sets: list[tuple[str, str]]  # (dataset, split) sets searched together
    model_tag: str
    question_tag: str  # question encoder: question vectors live in its own space (see encoders/questions.py)
    answers: list[str]  # answer vocabulary, most frequent first
    questions: list[str]  # distinct KB questions
    question_vectors: np.ndarray  # float32 [n_questions, dq], question encoder space
    qa_by_image: dict[str, tuple[np.ndarray, np.ndarray]]  # image_id -> (question indices, answer indices)
    captions: dict[str, str]  # image_id -> caption
    fingerprint: str  # changes whenever the KB's content changes
    config: RetrievalConfig = field(default_factory=RetrievalConfig)
    # image_id -> every reference caption its listings in the KB carry (COCO, a manifest with a row per caption),
    # `captions[image_id]` first; images with one caption only may be left out (`references_of` fills them in).
    references: dict[str, list[str]] = field(default_factory=dict)
    _answer_index: dict[str, int] = field(default_factory=dict, repr=False)
    _images_by_question: dict[int, list[str]] = field(default_factory=dict, repr=False)
    _question_forms: np.ndarray | None = field(default=None, repr=False)

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
        """Prefilter on the image vector table: rows listed in any of the KB's sets."""
        return vector_sets_filter(self.sets)

    @property
    def label(self) -> str:
        return kb_label(self.sets)

    def references_of(self, image_id: str) -> list[str]:
        """Every caption of a KB image, its `caption` first; [] for an image without one."""
        if image_id in self.references:
            return self.references[image_id]
        caption = self.captions.get(image_id)
        return [caption] if caption else []

    def answer_index(self, answer: str) -> int:
        """Index of an answer in the vocabulary, -1 when the KB never saw it."""
        if not self._answer_index:
            self._answer_index = {a: i for i, a in enumerate(self.answers)}
        return self._answer_index.get(answer, -1)

    def match_questions(self, question_vectors: np.ndarray,
                        questions: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """For each item question, the most similar KB question: (index [n], cosine [n]).

        Args:
            question_vectors: float32 [n, dq], the items' questions in the question encoder's space.
            questions: their texts; given (and `config.match_question_form` on), each matches only KB questions
                of its own `question_form`, or all of them when the KB has none of that form.
        """
        if not self.questions:
            return np.full(len(question_vectors), -1), np.zeros(len(question_vectors), np.float32)
        sims = question_vectors @ self.question_vectors.T  # [n, n_questions]
        if questions is not None and self.config.match_question_form:
            if self._question_forms is None:
                self._question_forms = _form_codes(self.questions)
            same_form = _form_codes(questions)[:, None] == self._question_forms[None, :]
            same_form[~same_form.any(1)] = True
            sims = np.where(same_form, sims, -np.inf)
        best = sims.argmax(1)
        return best, sims[np.arange(len(best)), best]

    def votes(self, neighbours: Neighbours, question_index: np.ndarray, question_sim: np.ndarray,
              question_vectors: np.ndarray | None = None) -> np.ndarray:
        """Retrieval context per item: what its neighbours answered to the KB question matched to it.

        Args:
            neighbours: per item, KB images that were asked its matched question (see `vqa.retrieve_for_vectors`),
                or, for an item whose question matched none closely, its plain nearest KB images.
            question_index: int [n_items], the matched KB question of each item.
            question_sim: float32 [n_items], how close that match is (1.0: the same question).
            question_vectors: float32 [n_items, dq]; needed for the fallback items.
        Returns:
            float32 [n_items, n_answers + 1]: the answer histogram weighted by image similarity (softmax at
            IMAGE_TAU, summing to 1), then the question match similarity. A fallback item's histogram counts
            every QA pair of its neighbours, each also weighted by how close its question is to the item's.
        """
        n_answers = len(self.answers)
        out = np.zeros((len(question_index), n_answers + 1), np.float32)
        for item, (ids, scores) in enumerate(zip(neighbours.ids, neighbours.scores)):
            fallback = question_sim[item] < self.config.question_match_min and question_vectors is not None
            answers, logits = [], []
            for image_id, score in zip(ids, scores):
                questions, image_answers = self.qa_by_image.get(image_id, (np.empty(0, int), np.empty(0, int)))
                if fallback:
                    q_sims = self.question_vectors[questions] @ question_vectors[item] if len(questions) else []
                    answers += image_answers.tolist()
                    logits += [score / IMAGE_TAU + q / QUESTION_TAU for q in q_sims]
                else:
                    chosen = image_answers[questions == question_index[item]]
                    answers += chosen.tolist()
                    logits += [score / IMAGE_TAU] * len(chosen)
            if answers:
                logits = np.asarray(logits, np.float64)
                hist = np.bincount(answers, np.exp(logits - logits.max()), minlength=n_answers)
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


def _form_codes(questions: list[str]) -> np.ndarray:
    """`question_form` of each question as one int (0-3), for comparing forms in bulk."""
    return np.array([2 * yes_no + negated for yes_no, negated in map(question_form, questions)], dtype=np.int8)


def load_knowledge_base(store: Store, model_tag: str, question_tag: str, sets: list[tuple[str, str]],
                        config: RetrievalConfig | None = None) -> KnowledgeBase:
    """Read the sets' QA pairs, captions and question vectors (embedded under `question_tag`).

    Raises:
        UserError: a set holds no images (nothing to retrieve).
    """
    config = config or RetrievalConfig()
    where = sets_filter(sets)
    qa = store.read(QA, columns=["image_id", "question", "answer"], where=f"{where} AND answer IS NOT NULL")
    qa = qa.to_pandas() if qa.num_rows else pd.DataFrame(columns=["image_id", "question", "answer"])
    columns = ["image_id", "dataset", "split", "caption", "captions"]
    images = store.read(IMAGES, columns=columns, where=where, schema=IMAGES_SCHEMA).to_pandas()
    if not images.empty:  # a stable order, so the same KB always gives the same captions and fingerprint
        images = images.sort_values(["image_id", "dataset", "split"], kind="stable")
    found = set(zip(images.get("dataset", []), images.get("split", [])))
    for dataset, split in sets:
        if (dataset, split) not in found:
            raise UserError(f"knowledge base {dataset}:{split} has no images: ingest it first (ravlm ingest) or "
                            f"name another with --kb DATASET[:SPLIT]; `ravlm sql \"select dataset, split, count(*) "
                            f"from images group by 1, 2\"` lists what the store holds")
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
    references = _references(images, captions)
    digest = hashlib.blake2b(digest_size=8)
    # References count only where an image has more than its one caption, so a KB of one caption per image keeps
    # its fingerprint (and its trained answerers and jobs) from before references existed.
    parts = (CONTEXT_VERSION, IMAGE_TAU, QUESTION_TAU, config, model_tag, question_tag, kb_label(sets),
             *sorted(qa_by_image), *questions, *answers, *sorted(captions.items()), *sorted(references.items()))
    for part in parts:
        digest.update(str(part).encode() + b"\x1f")
    return KnowledgeBase(sets, model_tag, question_tag, answers, questions, vectors, qa_by_image, captions,
                         digest.hexdigest(), config, references)


def _references(images: pd.DataFrame, captions: dict[str, str]) -> dict[str, list[str]]:
    """image id -> its distinct captions over all its KB listings (`captions[id]` first), for images with more
    than one; the listings come in the stable order `load_knowledge_base` sorted them into."""
    found: dict[str, dict[str, None]] = {}
    for image_id, several in zip(images["image_id"], images["captions"]):
        if image_id in captions and several is not None and len(several):
            found.setdefault(image_id, {captions[image_id]: None}).update(
                dict.fromkeys(c for c in several if isinstance(c, str) and c))
    return {image_id: list(texts) for image_id, texts in found.items() if len(texts) > 1}
