"""Question matching keeps negations apart; voting and question-conditioned retrieval; the fusion answerer."""
import json

import numpy as np
import pyarrow as pa
import pytest

from ravlm_core.answerers import FusionAnswerer, FusionConfig, train_fusion, vote_answers
from ravlm_core.knowledge import KnowledgeBase, RetrievalConfig
from ravlm_core.retrieve import Neighbours
from ravlm_core.store import MEMBERSHIPS, vector_schema
from ravlm_core.vqa import retrieve_for_vectors
from tests.conftest import unit_rows


def _kb(question_vectors, qa_by_image, answers, config=RetrievalConfig()) -> KnowledgeBase:
    return KnowledgeBase([("d", "train")], "tag", "qtag", answers, [f"q{i}" for i in range(len(question_vectors))],
                         question_vectors, qa_by_image, {}, "fp", config)


def _question_and_negation(rng) -> np.ndarray:
    """Two unit vectors at cosine 0.97, like MiniLM's "is there a red shape?" / "is there not a red shape?"."""
    base, other = unit_rows(rng, 2, 32)
    orthogonal = other - (other @ base) * base
    negation = 0.97 * base + np.sqrt(1 - 0.97**2) * orthogonal / np.linalg.norm(orthogonal)
    return np.stack([base, negation]).astype(np.float32)


def test_questions_match_the_same_question_not_its_negation():
    questions = _question_and_negation(np.random.default_rng(0))
    kb = _kb(questions, {}, ["yes", "no"])
    index, sim = kb.match_questions(questions)
    assert index.tolist() == [0, 1] and np.allclose(sim, 1.0, atol=1e-5)


def test_votes_count_only_answers_to_the_matched_question_weighted_by_image_similarity():
    questions = _question_and_negation(np.random.default_rng(0))
    # Neighbours a, b, c answered the negation "no" and the question "yes"; d answered only the question, "no".
    qa = {i: (np.array([1, 0]), np.array([1, 0])) for i in "abc"} | {"d": (np.array([0]), np.array([1]))}
    kb = _kb(questions, qa, ["yes", "no"])
    neighbours = Neighbours([["a", "b", "c", "d"]], [[0.95, 0.95, 0.95, 0.80]])
    context = kb.votes(neighbours, np.array([0]), np.array([0.99], np.float32))
    assert vote_answers(context, kb.answers) == ["yes"]
    # d is 0.15 less similar: weight e^(-0.15 / IMAGE_TAU) = e^-3 against 1 for each of a, b, c.
    assert context[0, 1] == pytest.approx(np.exp(-3) / (3 + np.exp(-3)), rel=1e-4)
    assert context[0, :2].sum() == pytest.approx(1.0) and context[0, -1] == pytest.approx(0.99)
    asked_negation = kb.votes(neighbours, np.array([1]), np.array([1.0], np.float32))
    assert vote_answers(asked_negation, kb.answers) == ["no"]


def test_votes_empty_when_no_neighbour_was_asked_the_question():
    kb = _kb(np.eye(2, dtype=np.float32), {"x": (np.array([1]), np.array([0]))}, ["yes", "no"])
    context = kb.votes(Neighbours([["x"]], [[0.9]]), np.array([0]), np.array([1.0], np.float32))
    assert context[0, :2].sum() == 0 and vote_answers(context, kb.answers) == [""]


def test_retrieval_finds_the_nearest_images_that_were_asked_the_question(store):
    rng = np.random.default_rng(1)
    questions = _question_and_negation(rng)
    images = unit_rows(rng, 40, 8)
    # Even images were asked question 0, odd ones only its negation.
    qa = {f"i{n}": (np.array([n % 2]), np.array([0])) for n in range(40)}
    kb = _kb(questions, qa, ["yes", "no"])
    rows = pa.Table.from_pydict(
        {"image_id": [f"i{n}" for n in range(40)], "vector": list(images), "memberships": [["d:train"]] * 40,
         "model_tag": ["t"] * 40, "embedded_at": [None] * 40},
        schema=vector_schema(8, "image_id", MEMBERSHIPS))
    store.upsert(kb.image_table, rows, "image_id")
    queries = images[[1, 2]]  # an odd image asked question 0, an even image asked question 0 (left out)
    got = retrieve_for_vectors(store, kb, queries, questions[[0, 0]], 3, exclude=["i1", "i2"])
    even = np.arange(0, 40, 2)
    for query, ids, own in zip(queries, got.neighbours.ids, ["i1", "i2"]):
        expected = [f"i{even[j]}" for j in np.argsort(-(images[even] @ query)) if f"i{even[j]}" != own][:3]
        assert ids == expected
    assert got.question_index.tolist() == [0, 0]


def test_a_question_no_kb_question_matches_falls_back_to_image_neighbours_and_their_closest_questions():
    rng = np.random.default_rng(2)
    questions = unit_rows(rng, 3, 16)  # q0 "what colour?", q1 "what shape?", q2 an unrelated yes/no question
    # Both neighbours answered q0 with "red" and q1 with "circle"; the item asks a paraphrase of q0 at cosine 0.8.
    qa = {i: (np.array([0, 1]), np.array([0, 1])) for i in "ab"}
    kb = _kb(questions, qa, ["red", "circle"], RetrievalConfig(question_match_min=0.9))
    paraphrase = 0.8 * questions[0] + 0.6 * questions[2]
    paraphrase = (paraphrase / np.linalg.norm(paraphrase))[None].astype(np.float32)
    index, sim = kb.match_questions(paraphrase)
    context = kb.votes(Neighbours([["a", "b"]], [[0.9, 0.9]]), index, sim, paraphrase)
    assert sim[0] < 0.9 and vote_answers(context, kb.answers) == ["red"]
    assert context[0, 0] > 0.99  # the q1 answers weigh e^-(0.8 - 0.0x)/QUESTION_TAU less
    # The same item with a strict threshold off (0.0) takes the matched question's answers alone: no question
    # vectors needed, and q1's "circle" never counts.
    strict = _kb(questions, qa, ["red", "circle"], RetrievalConfig(question_match_min=0.0))
    assert strict.votes(Neighbours([["a", "b"]], [[0.9, 0.9]]), index, sim)[0, 1] == 0


def test_fusion_learns_from_retrieved_context_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    n, answers = 3000, ["red", "green", "blue", "yes"]
    labels = rng.integers(0, 4, n)
    images = unit_rows(rng, n, 16)  # carry no signal about the answer
    questions = unit_rows(rng, n, 16)
    context = np.zeros((n, 5), np.float32)
    noisy = np.where(rng.random(n) < 0.9, labels, rng.integers(0, 4, n))  # neighbours right 90% of the time
    context[np.arange(n), noisy] = 1.0
    config = FusionConfig(epochs=6, hidden=64)
    train, test = slice(0, 2500), slice(2500, n)
    with_dir = train_fusion(images[train], questions[train], context[train], labels[train], answers, tmp_path, "fp",
                            config)
    without_dir = train_fusion(images[train], questions[train], context[train], labels[train], answers, tmp_path,
                               "fp", FusionConfig(epochs=6, hidden=64, use_retrieval=False))
    assert with_dir != without_dir and (with_dir / "weights.safetensors").exists()
    with_acc = np.mean(np.array(FusionAnswerer(with_dir).predict(images[test], questions[test], context[test]))
                       == np.array(answers)[labels[test]])
    without_acc = np.mean(np.array(FusionAnswerer(without_dir).predict(images[test], questions[test], context[test]))
                          == np.array(answers)[labels[test]])
    assert with_acc > 0.8 and without_acc < 0.45
    # Same data and config: the saved model is reused, not retrained.
    mtime = (with_dir / "weights.safetensors").stat().st_mtime_ns
    again = train_fusion(images[train], questions[train], context[train], labels[train], answers, tmp_path, "fp", config)
    assert again == with_dir and (with_dir / "weights.safetensors").stat().st_mtime_ns == mtime
    assert json.loads((with_dir / "answerer.json").read_text())["answers"] == answers
