"""Neighbour voting picks the matching question over its negation; the fusion answerer uses retrieved context."""
import json

import numpy as np

from ravlm_core.answerers import FusionAnswerer, FusionConfig, train_fusion, vote_answers
from ravlm_core.knowledge import KnowledgeBase
from ravlm_core.retrieve import Neighbours
from tests.conftest import unit_rows


def _kb(question_vectors, qa_by_image, answers) -> KnowledgeBase:
    return KnowledgeBase("d", "train", "tag", answers, [f"q{i}" for i in range(len(question_vectors))],
                         question_vectors, qa_by_image, {}, "fp")


def test_votes_prefer_the_same_question_over_its_near_duplicate_negation():
    rng = np.random.default_rng(0)
    base = unit_rows(rng, 1, 32)[0]
    other = unit_rows(rng, 1, 32)[0]
    negation = 0.97 * base + np.sqrt(1 - 0.97**2) * (other - (other @ base) * base) / np.linalg.norm(other - (other @ base) * base)
    questions = np.stack([base, negation]).astype(np.float32)
    assert abs(float(questions[0] @ questions[1]) - 0.97) < 1e-3
    # Three neighbours answered the negation "no"; one answered the question itself "yes".
    qa = {"a": (np.array([1]), np.array([1])), "b": (np.array([1]), np.array([1])), "c": (np.array([1]), np.array([1])),
          "d": (np.array([0]), np.array([0]))}
    kb = _kb(questions, qa, ["yes", "no"])
    neighbours = Neighbours([["a", "b", "c", "d"]], [[0.95, 0.95, 0.95, 0.93]])
    context = kb.votes(neighbours, [0], base[None, :])
    assert vote_answers(context, kb.answers) == ["yes"]
    assert context[0, -1] > 0.999  # best question similarity is reported as a feature
    # Asked the negation, the same neighbours vote "no".
    assert vote_answers(kb.votes(neighbours, [0], negation[None, :].astype(np.float32)), kb.answers) == ["no"]


def test_votes_empty_when_no_neighbour_has_questions():
    kb = _kb(np.eye(2, dtype=np.float32), {}, ["yes", "no"])
    context = kb.votes(Neighbours([["x"]], [[0.9]]), [0], np.eye(2, dtype=np.float32)[:1])
    assert context.sum() == 0 and vote_answers(context, kb.answers) == [""]


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
