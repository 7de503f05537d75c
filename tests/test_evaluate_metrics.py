"""Tests for ravlm_core.evaluate.metrics: small hand-computed cases, and agreement with coco-caption's Java pipeline."""
from __future__ import annotations

import json
import math
import random
import shutil

import pytest

from ravlm_core.evaluate.metrics import (
    caption_metrics,
    coco_tokenize,
    normalize_answer,
    normalize_vqa_answer,
    retrieval_metrics,
    vqa_metrics,
    vqa_soft_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Red ", "red"), ("red.", "red"), ("  Light   BLUE?! ", "light blue"), ("t-shirt", "t-shirt"), ("no .", "no")],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_vqa_metrics_hand_case():
    truth = ["Red ", "blue", "circle", "yes"]
    pred = ["red.", "red", "circle", "no"]
    types = ["color", "color", "shape", "yes/no"]
    m = vqa_metrics(truth, pred, types)

    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.5)  # "Red " == "red." and circle are right
    assert m["labels"] == ["blue", "circle", "no", "red", "yes"]
    # Per label (blue, circle, no, red, yes): precision 0,1,0,1/2,0; recall 0,1,0,1,0; F1 0,1,0,2/3,0.
    assert m["macro_precision"] == pytest.approx(1.5 / 5)
    assert m["macro_recall"] == pytest.approx(2 / 5)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3) / 5)
    assert m["per_question_type"] == {
        "color": {"n": 2, "accuracy": 0.5},
        "shape": {"n": 1, "accuracy": 1.0},
        "yes/no": {"n": 1, "accuracy": 0.0},
    }
    # Rows are truth, columns prediction, both in `labels` order.
    assert m["confusion"] == [
        [0, 0, 0, 1, 0],  # blue -> red
        [0, 1, 0, 0, 0],  # circle -> circle
        [0, 0, 0, 0, 0],  # "no" never true
        [0, 0, 0, 1, 0],  # red -> red
        [0, 0, 1, 0, 0],  # yes -> no
    ]
    json.dumps(m)  # the CLI prints and stores these dicts as JSON


def test_vqa_metrics_without_types_and_bad_input():
    m = vqa_metrics(["a", "b"], ["a", "b"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["per_question_type"] == {}
    with pytest.raises(ValueError, match="lengths"):
        vqa_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="lengths"):
        vqa_metrics(["a"], ["a"], ["t1", "t2"])
    with pytest.raises(ValueError, match="empty"):
        vqa_metrics([], [])
    with pytest.raises(TypeError, match=r"y_pred\[1\]"):
        vqa_metrics(["a", "b"], ["a", None])


def test_retrieval_metrics_hand_case():
    ranked = [["a", "b", "c"], ["x", "y"], ["q", "r", "s", "t", "u", "v"]]
    relevant = [{"b"}, {"z"}, {"q", "v"}]
    m = retrieval_metrics(ranked, relevant)

    assert m["n_queries"] == 3
    # First relevant ranks: 2, none, 1: the share of queries with a hit.
    assert m["hit@1"] == pytest.approx(1 / 3)
    assert m["hit@5"] == pytest.approx(2 / 3)
    assert m["hit@10"] == pytest.approx(2 / 3)
    # The share of each query's relevant ids found: q3 has "q" at rank 1 and "v" only at rank 6.
    assert m["recall@1"] == pytest.approx((0 + 0 + 1 / 2) / 3)
    assert m["recall@5"] == pytest.approx((1 + 0 + 1 / 2) / 3)
    assert m["recall@10"] == pytest.approx((1 + 0 + 1) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    # nDCG@10, binary gains: q1 = (1/log2 3) / 1; q2 = 0; q3 = (1 + 1/log2 7) / (1 + 1/log2 3).
    q1 = 1 / math.log2(3)
    q3 = (1 + 1 / math.log2(7)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((q1 + 0 + q3) / 3)


def test_retrieval_ndcg_counts_relevant_ids_that_were_not_retrieved():
    # Only one of two relevant ids came back, at rank 1: the ideal DCG still has both.
    m = retrieval_metrics([["a", "x"]], [{"a", "b"}], ks=(1, 2))
    assert m["ndcg@10"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert set(m) == {"n_queries", "recall@1", "recall@2", "hit@1", "hit@2", "ndcg@10", "mrr"}
    assert (m["recall@2"], m["hit@2"]) == (0.5, 1.0)


def test_recall_and_hits_part_when_a_query_has_more_relevant_ids_than_k():
    # Five images carry the query's caption: one in the top 1 is a hit but a fifth of the recall.
    m = retrieval_metrics([["a", "b", "x", "c"], ["y", "z"]], [{"a", "b", "c", "d", "e"}, {"z"}], ks=(1, 2, 4))
    assert [m[f"hit@{k}"] for k in (1, 2, 4)] == [0.5, 1.0, 1.0]
    assert m["recall@1"] == pytest.approx((1 / 5 + 0) / 2)
    assert m["recall@2"] == pytest.approx((2 / 5 + 1) / 2)
    assert m["recall@4"] == pytest.approx((3 / 5 + 1) / 2)


# --- VQAv2 soft accuracy ---

@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"), ("the dog.", "dog"), ("dont", "don't"), ("yes.", "yes"), (" An Apple\n", "apple"),
        ("none", "0"), ("ten", "10"), ("3.5", "3.5"), ("1,000", "1000"), ("red, white", "red white"),
        ("t-shirt", "t shirt"), ("left - right", "left right"), ("what's up?", "what's up"), ("Im", "im"),
    ],
)
def test_normalize_vqa_answer_official_cases(raw, expected):
    # "Im" stays: the official contractions map has capitalised keys ("Im": "I'm") that never meet lowercase text.
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize(("agreeing", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_accuracy_leave_one_out_average(agreeing, expected):
    # Averaging min(1, matches among the other 9 / 3) over the 10 humans: with 2 agreeing, those 2 score 1/3 and
    # the other 8 score 2/3 -> (2/3 + 16/3) / 10 = 0.6 exactly; with 3 agreeing, 3 * 2/3 + 7 * 1 -> 0.9, not 1.
    humans = ["red"] * agreeing + ["blue", "green", "pink", "gray", "black", "white", "tan", "gold", "teal", "cyan"]
    m = vqa_soft_accuracy(["red"], [humans[:10]])
    assert m == {"n": 1, "soft_accuracy": pytest.approx(expected)}


def test_vqa_soft_accuracy_normalises_only_when_humans_disagree():
    disagree = ["2"] * 4 + ["3"] * 6
    assert vqa_soft_accuracy(["Two."], [disagree])["soft_accuracy"] == pytest.approx(1.0)
    # As in the official vqaEval.py: ten identical human answers leave both sides as they are (only stripped).
    assert vqa_soft_accuracy(["Yes"], [["yes"] * 10])["soft_accuracy"] == 0.0
    assert vqa_soft_accuracy([" yes\n"], [["yes"] * 10])["soft_accuracy"] == 1.0


def test_vqa_soft_accuracy_per_question_type_and_bad_input():
    humans = [["yes"] * 10, ["2"] * 2 + ["3"] * 8, ["red"] * 10]
    m = vqa_soft_accuracy(["yes", "two", "blue"], humans, ["yes/no", "count", "color"])
    assert m["n"] == 3
    assert m["soft_accuracy"] == pytest.approx((1.0 + 0.6 + 0.0) / 3)
    assert m["per_question_type"] == {
        "color": {"n": 1, "soft_accuracy": 0.0},
        "count": {"n": 1, "soft_accuracy": pytest.approx(0.6)},
        "yes/no": {"n": 1, "soft_accuracy": 1.0},
    }
    assert "per_question_type" not in vqa_soft_accuracy(["yes"], [["yes"]])
    json.dumps(m)
    with pytest.raises(ValueError, match=r"human_answers\[1\] is empty"):
        vqa_soft_accuracy(["a", "b", "c"], [["a"], [], []])
    with pytest.raises(ValueError, match="lengths"):
        vqa_soft_accuracy(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="wrap each item"):
        vqa_soft_accuracy(["a"], ["a"])
    with pytest.raises(TypeError, match=r"predictions\[1\]"):
        vqa_soft_accuracy(["a", None], [["a"], ["b"]])


# --- Captions ---

def test_caption_metrics_identical_predictions_score_top():
    refs = [["a red circle on a white background"], ["a small blue square next to a green triangle"]]
    m = caption_metrics([r[0] for r in refs], refs)
    assert set(m) == {"n", "bleu1", "bleu4", "rouge_l", "cider"}
    assert m["n"] == 2
    assert m["bleu1"] == pytest.approx(1.0)
    assert m["bleu4"] == pytest.approx(1.0)
    assert m["rouge_l"] == pytest.approx(1.0)
    assert m["cider"] > 5.0
    json.dumps(m)


def test_caption_metrics_unrelated_predictions_score_near_zero():
    refs = [["a red circle on a white background"], ["a small blue square next to a green triangle"]]
    m = caption_metrics(["quantum tax law reform", "seven hungry purple dogs"], refs)
    assert m["bleu4"] < 0.01
    assert m["rouge_l"] == 0.0
    assert m["cider"] == 0.0


def test_caption_metrics_short_predictions_and_variable_reference_counts():
    refs = [["red", "a red one"], ["blue circle"], ["green square", "a green square", "square"]]
    m = caption_metrics(["red", "blue", "square"], refs)
    assert m["n"] == 3
    assert 0.0 <= m["bleu4"] < 0.2  # no 4-grams at all: corpus BLEU-4 collapses, but does not crash
    assert 0.0 < m["rouge_l"] <= 1.0
    assert m["cider"] > 0.0
    with pytest.raises(ValueError, match="no reference"):
        caption_metrics(["red", "blue"], [["red"], []])
    with pytest.raises(ValueError, match="wrap each item"):
        caption_metrics(["red"], ["red"])
    with pytest.raises(ValueError, match="lengths"):
        caption_metrics(["red", "blue"], [["red"]])
    with pytest.raises(ValueError, match="holds a word"):
        caption_metrics(["red"], [["..."]])
    with pytest.raises(TypeError, match=r"references\[0\]\[1\]"):
        caption_metrics(["red"], [["red", None]])


def test_caption_metrics_tokenises_like_coco_and_prints_nothing(capsys):
    # Case, punctuation and clitic splitting do not cost anything once both sides go through coco_tokenize.
    m = caption_metrics(["A DOG'S BALL, ISN'T IT?", "Two cats."], [["a dog 's ball is n't it"], ["two cats"]])
    assert m["bleu4"] == pytest.approx(1.0) and m["rouge_l"] == pytest.approx(1.0)
    assert capsys.readouterr().out == ""  # pycocoevalcap's Bleu prints its counts unless told not to


def test_caption_metrics_cider_depends_on_the_whole_set():
    # idf comes from the references of every item scored together: one item alone has idf 0 everywhere.
    item = (["a red circle"], [["a red circle"]])
    assert caption_metrics(*item)["cider"] == 0.0
    assert caption_metrics(item[0] + ["a blue square"], item[1] + [["a blue square"]])["cider"] > 0.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A dog's bone is on the floor.", "a dog 's bone is on the floor"),
        ("I don't know; they can't, won't.", "i do n't know they ca n't wo n't"),
        ("The dogs' toys (three of them)", "the dogs toys -lrb- three of them -rrb-"),
        ('A "quoted" word and a t-shirt -- here', "a quoted word and a t-shirt here"),
        ("It costs $5.50 or 1,000 dollars, 50% off!", "it costs $ 5.50 or 1,000 dollars 50 % off"),
        ("Dr. Smith at 10:30 a.m. in the U.S.", "dr. smith at 10:30 a.m. in the u.s."),
        ("plan b. The end", "plan b the end"),
        ("cannot gonna", "can not gon na"),
        ("Don’t “quote”…", "do n't quote"),
        ("", ""),
    ],
)
def test_coco_tokenize_hand_cases(raw, expected):
    assert coco_tokenize(raw) == expected


# Varied captions for the agreement tests. None ends in a lone letter and a period ("plan b."): Java lexes a whole
# batch as one text and looks across captions there (see coco_tokenize), which coco_tokenize cannot.
CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs playing with a frisbee in the park!",
    "A woman's purse sits on the kitchen counter.",
    "The cat isn't sleeping; it's watching the birds.",
    "A child's toy (a red truck) lies on the rug.",
    '"Stop" is written on the sign at the corner.',
    "A sign that says 'no parking' next to a fire hydrant.",
    "A 5-year-old boy holds a t-shirt with a well-known logo.",
    "The bus costs $2.50, and the train costs 1,000 yen.",
    "A plate with 3.5 slices of pizza -- and a fork.",
    "MULTIPLE   spaces   and UPPER case WORDS?",
    "Dr. Smith's dog sits by St. Mary's church at 10:30 a.m.",
    "A bear in the U.S. woods, near a river...",
    "They're eating hot dogs; we've seen them, haven't we?",
    "I'm sure he'll say she'd like the blue one.",
    "People can't cross the street because cars won't stop.",
    "The dogs' bowls are empty: one is red, one is blue.",
    "A black-and-white photo of an old-fashioned train.",
    "Two giraffes [one tall, one short] eat leaves.",
    "A {strange} sculpture stands in the plaza.",
    "A vase of flowers & a bowl of fruit on a table.",
    "An airplane flies over the city at 30,000 feet.",
    "A man wearing a 49ers cap rides a bike/scooter.",
    "It's 50% off at the store in the mall!!",
    "Rock 'n' roll band plays on a stage at 9 o'clock.",
    "Y'all should see the view from the top of the hill.",
    "The man who cannot swim sits on the beach.",
    "They're gonna cook something on the grill.",
    "A kitchen with stainless-steel appliances and a microwave",
    "a   bathroom with a toilet , sink , and mirror .",
    "A cat sitting on a laptop keyboard ... again",
    "Zebras grazing in a field -- next to an elephant",
    "A skateboarder does a trick at a skate park (mid-air).",
    "A DOG'S BED IS BY THE DOOR AND IT ISN'T MOVING",
    "The Yankees' stadium, full of fans, on July 4th.",
    "Several people in the U.K. are waiting for a double-decker bus",
    "A man holding an umbrella in the rain; the street's wet.",
    'A sign reading "Welcome to Fort Worth" by the road.',
    "The pizza has pepperoni, cheese & olives on it?",
    "Mr. and Mrs. Jones stand near their 1990s car.",
    "Don’t touch the café’s naïve sign — it’s “fragile”.",
    "A group of kids play soccer at 3:15 p.m. in the field",
]


def _official_ptb():
    """pycocoevalcap's own PTBTokenizer, which runs Stanford CoreNLP through Java; fails (never skips) without it."""
    if shutil.which("java") is None:
        pytest.fail("java is not on PATH: comparing with coco-caption's PTBTokenizer needs a Java runtime "
                    "(e.g. apt-get install default-jre-headless)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer()


def test_coco_tokenize_matches_stanford_ptbtokenizer():
    official = _official_ptb().tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTIONS)})
    assert [coco_tokenize(c) for c in CAPTIONS] == [official[i][0] for i in range(len(CAPTIONS))]


def _caption_sample(n_items: int = 30, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Items with 1-5 references each; the prediction is one reference with a word dropped and two swapped."""
    rng = random.Random(seed)
    predictions, references = [], []
    for _ in range(n_items):
        refs = rng.sample(CAPTIONS, rng.randint(1, 5))
        words = rng.choice(refs).split()
        del words[rng.randrange(len(words))]
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        predictions.append(" ".join(words))
        references.append(refs)
    return predictions, references


def test_caption_metrics_equals_official_coco_caption_pipeline():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    predictions, references = _caption_sample()
    tokenizer = _official_ptb()  # as pycocoevalcap's COCOEvalCap: tokenise references and results, then score
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge_l, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)

    m = caption_metrics(predictions, references)
    assert m["n"] == 30
    assert m["bleu1"] == pytest.approx(bleu[0], abs=1e-6)
    assert m["bleu4"] == pytest.approx(bleu[3], abs=1e-6)
    assert m["rouge_l"] == pytest.approx(rouge_l, abs=1e-6)
    assert m["cider"] == pytest.approx(cider, abs=1e-6)
    assert 0.1 < m["bleu4"] < 1.0 and 0.5 < m["cider"]  # a sample that exercises the scorers, not a degenerate one
