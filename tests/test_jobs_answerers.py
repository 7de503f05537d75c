"""Question matching keeps negations apart; voting and question-conditioned retrieval; the fusion answerer."""
import json

import numpy as np
import pyarrow as pa
import pytest

from ravlm_core.jobs.answerers import (
    APPEARANCE_RANKS,
    FusionAnswerer,
    FusionConfig,
    appearance,
    train_fusion,
    vote_answers,
)
from ravlm_core.retrieval.knowledge import KnowledgeBase, RetrievalConfig, question_form
from ravlm_core.retrieval.questions import Retrieved, retrieve_for_vectors
from ravlm_core.retrieval.search import Neighbours
from ravlm_core.schemas import MEMBERSHIPS, vector_schema
from tests.helpers.vectors import unit_rows


def _kb(question_vectors, qa_by_image, answers, config=RetrievalConfig(), questions=None) -> KnowledgeBase:
    questions = questions or [f"q{i}" for i in range(len(question_vectors))]
    return KnowledgeBase([("d", "train")], "tag", "qtag", answers, questions, question_vectors, qa_by_image, {}, "fp",
                         config)


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


@pytest.mark.parametrize("question, form", [
    ("Is there a red shape?", (True, False)),
    ("is there not a red shape?", (True, True)),
    ("does the picture lack a red shape?", (True, True)),
    ("is the shape something other than a circle?", (True, True)),
    ("Isn\u2019t the shape blue?", (True, True)),
    ("What color is the shape?", (False, False)),
    ("which shape is not in the image?", (False, True)),
    ("", (False, False)),
])
def test_question_form_tells_yes_no_from_open_and_negated_from_plain(question, form):
    assert question_form(question) == form


def test_a_question_matches_a_kb_question_of_its_own_form_even_when_its_negation_is_closer():
    # The KB was asked "is there a red shape?" (q0) and "what shape is it?" (q1). A new wording of the *negation*
    # lies closest to q0 by cosine (as MiniLM puts "does the picture lack a red shape?"), yet q0's answers
    # would be exactly wrong for it: only a KB question of its own form may match, here none but the
    # KB's negated one (q2), farther away.
    rng = np.random.default_rng(3)
    q0, q1, q2 = unit_rows(rng, 3, 32)
    item = 0.9 * q0 + 0.3 * q2
    item = (item / np.linalg.norm(item))[None].astype(np.float32)
    kb_questions = ["is there a red shape?", "what shape is it?", "is there not a red shape?"]
    kb = _kb(np.stack([q0, q1, q2]).astype(np.float32), {}, ["yes", "no"], questions=kb_questions)
    assert kb.match_questions(item)[0].tolist() == [0]  # by vector alone: the wrong polarity
    index, sim = kb.match_questions(item, ["does the picture lack a red shape?"])
    assert index.tolist() == [2] and sim[0] == pytest.approx(float(item[0] @ q2), abs=1e-5)
    # With no KB question of the item's form, every KB question may match; switched off, the closest does.
    assert kb.match_questions(item, ["which shape is not red?"])[0].tolist() == [0]
    off = _kb(kb.question_vectors, {}, ["yes", "no"], RetrievalConfig(match_question_form=False), kb_questions)
    assert off.match_questions(item, ["does the picture lack a red shape?"])[0].tolist() == [0]


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


def test_allowed_answers_are_those_the_kb_gave_the_matched_question():
    # q0 "what colour?" got red / green, q1 "is it red?" got yes / no; an item matched to nothing keeps all.
    qa = {"a": (np.array([0, 1]), np.array([0, 2])), "b": (np.array([0, 1]), np.array([1, 3]))}
    kb = _kb(np.eye(2, dtype=np.float32), qa, ["red", "green", "yes", "no"])
    retrieved = Retrieved(np.zeros((3, 4), np.float32), np.zeros((3, 2), np.float32), np.array([0, 1, -1]),
                          np.array([0.7, 1.0, 0.0], np.float32), Neighbours.none(3))
    assert retrieved.allowed_answers(kb).tolist() == [[True, True, False, False], [False, False, True, True],
                                                      [True, True, True, True]]


def test_fusion_answers_only_among_the_allowed_answers(tmp_path):
    # Trained to answer "yes" to nearly everything, the answerer still picks among the allowed answers, by its
    # own scores; an item with nothing allowed is answered as without a mask (not by argmax over all -inf).
    rng = np.random.default_rng(5)
    n, answers = 400, ["yes", "red", "green"]
    images, questions = unit_rows(rng, n, 8), unit_rows(rng, n, 8)
    labels = np.where(rng.random(n) < 0.9, 0, rng.integers(1, 3, n))
    model = FusionAnswerer(train_fusion(images, questions, np.zeros((n, 4), np.float32), labels, answers, tmp_path,
                                        "fp", FusionConfig(epochs=4, hidden=32)))
    context = np.zeros((3, 4), np.float32)
    allowed = np.array([[False, True, True], [False, False, True], [False, False, False]])
    got = model.predict(images[:3], questions[:3], context, allowed)
    assert got[0] in ("red", "green") and got[1] == "green"
    assert got[2] == model.predict(images[2:3], questions[2:3], context[2:3])[0] != "yes"  # not all -inf: index 0


def _signature(rng, colour, background, shape_pixels: int) -> bytes:
    """A 16x16 RGB signature: `shape_pixels` pixels of `colour` at random places on `background`."""
    pixels = np.tile(np.array(background, np.uint8), (256, 1))
    pixels[rng.choice(256, shape_pixels, replace=False)] = colour
    return pixels.tobytes()


def test_appearance_is_the_images_colours_by_brightness_rank_wherever_they_are():
    rng = np.random.default_rng(6)
    dark_gray, light = (90, 90, 95), (230, 220, 240)
    one, moved = _signature(rng, dark_gray, light, 100), _signature(rng, dark_gray, light, 100)
    black = _signature(rng, (30, 28, 26), light, 100)
    looks = appearance([one, moved, black, None])
    assert looks.shape == (4, 3 * APPEARANCE_RANKS) and looks.dtype == np.float32
    assert np.array_equal(looks[0], looks[1])  # the same colours elsewhere in the image look the same
    ranked = looks[0].reshape(APPEARANCE_RANKS, 3)
    assert ranked[0] == pytest.approx(np.array(dark_gray) / 255) and ranked[-1] == pytest.approx(np.array(light) / 255)
    assert np.abs(looks[2] - looks[0]).max() > 0.2 and not looks[3].any()  # black is not gray; no signature: 0


def test_fusion_reads_the_appearance_the_image_vector_lacks(tmp_path):
    # The answer is the shade of the image's shape; the image vectors carry nothing about it (random), as a
    # caption-trained vector folds shades together. Only an answerer given `looks` can answer, and it must be
    # given them again when it predicts.
    rng = np.random.default_rng(7)
    n, answers = 1200, ["gray", "black"]
    labels = rng.integers(0, 2, n)
    shades = {0: (100, 100, 104), 1: (40, 36, 34)}
    looks = appearance([_signature(rng, np.array(shades[int(y)]) + rng.integers(-8, 9, 3),
                                   rng.integers(200, 256, 3), int(rng.integers(40, 180))) for y in labels])
    images, questions, context = unit_rows(rng, n, 16), np.tile(unit_rows(rng, 1, 16), (n, 1)), np.zeros((n, 3))
    context = context.astype(np.float32)
    train, test = slice(0, 1000), slice(1000, n)
    truth = np.array(answers)[labels[test]]

    def accuracy(config: FusionConfig) -> float:
        model = FusionAnswerer(train_fusion(images[train], questions[train], context[train], labels[train], answers,
                                            tmp_path, "fp", config, looks=looks[train]))
        return np.mean(np.array(model.predict(images[test], questions[test], context[test], looks=looks[test])) == truth)

    assert accuracy(FusionConfig(epochs=30, hidden=64)) > 0.95
    assert accuracy(FusionConfig(epochs=30, hidden=64, appearance=False)) < 0.7
    reads = FusionAnswerer(train_fusion(images[train], questions[train], context[train], labels[train], answers,
                                        tmp_path, "fp", FusionConfig(epochs=30, hidden=64), looks=looks[train]))
    with pytest.raises(ValueError, match="appearance"):
        reads.predict(images[test], questions[test], context[test])


def test_context_dropout_is_the_share_of_training_rows_answered_without_neighbours(tmp_path):
    # Training contexts always name the answer; the image carries it too. Given contexts that name a wrong answer,
    # an answerer that always saw its context (dropout 0) follows it; one that never did (1.0) reads the image.
    rng = np.random.default_rng(8)
    n, answers = 2400, ["red", "green", "blue"]
    labels = rng.integers(0, 3, n)
    centres = unit_rows(rng, 3, 16)
    images = (centres[labels] + 0.3 * rng.standard_normal((n, 16))).astype(np.float32)
    questions = np.tile(unit_rows(rng, 1, 16), (n, 1))
    context = np.zeros((n, 4), np.float32)
    context[np.arange(n), labels] = 1.0
    train, test = slice(0, 2000), slice(2000, n)
    misleading = np.zeros((n - 2000, 4), np.float32)
    misleading[np.arange(n - 2000), (labels[test] + 1) % 3] = 1.0
    truth = np.array(answers)[labels[test]]

    def accuracy(dropout: float) -> float:
        config = FusionConfig(epochs=6, hidden=32, image_dropout=0.0, context_dropout=dropout)
        model = FusionAnswerer(train_fusion(images[train], questions[train], context[train], labels[train], answers,
                                            tmp_path, "fp", config))
        return np.mean(np.array(model.predict(images[test], questions[test], misleading)) == truth)

    assert accuracy(0.0) < 0.5 and accuracy(1.0) > 0.85
