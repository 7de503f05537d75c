"""Tests for ravlm_core.metrics against small hand-computed cases."""
from __future__ import annotations

import json
import math

import pytest

from ravlm_core.metrics import caption_metrics, cider_d, normalize_answer, retrieval_metrics, vqa_metrics


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
    # First relevant ranks: 2, none, 1.
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    # nDCG@10, binary gains: q1 = (1/log2 3) / 1; q2 = 0; q3 = (1 + 1/log2 7) / (1 + 1/log2 3).
    q1 = 1 / math.log2(3)
    q3 = (1 + 1 / math.log2(7)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((q1 + 0 + q3) / 3)


def test_retrieval_ndcg_counts_relevant_ids_that_were_not_retrieved():
    # Only one of two relevant ids came back, at rank 1: the ideal DCG still has both.
    m = retrieval_metrics([["a", "x"]], [{"a", "b"}], ks=(1, 2))
    assert m["ndcg@10"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert set(m) == {"n_queries", "recall@1", "recall@2", "ndcg@10", "mrr"}


def test_caption_metrics_identical_predictions_score_top():
    refs = [["a red circle on a white background"], ["a small blue square next to a green triangle"]]
    m = caption_metrics([r[0] for r in refs], refs)
    assert m["n"] == 2
    assert m["bleu4"] == pytest.approx(1.0)
    assert m["rouge_l"] == pytest.approx(1.0)
    assert m["cider"] > 5.0


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


def test_cider_d_hand_case():
    # Two items -> idf = ln 2 for n-grams in one item's references. Item 1 matches exactly: cosine 1 for
    # n = 1, 2 and 0 for n = 3, 4 (a 2-token caption has none) -> 10 * 2/4 = 5. Item 2, "c e" vs "c d":
    # unigram cosine 1/2, bigram 0 -> 10 * 0.5/4 = 1.25. Corpus mean 3.125.
    assert cider_d([["a", "b"], ["c", "e"]], [[["a", "b"]], [["c", "d"]]]) == pytest.approx(3.125)


def test_cider_d_length_penalty_and_document_frequency():
    # Item 1: "a b" against an 8-token reference. Unigram cosine 2/(sqrt2*sqrt8) = 1/2, bigram 1/sqrt7,
    # length penalty exp(-(2-8)^2 / (2*6^2)) = exp(-1/2). Item 2 shares nothing -> 0.
    ref = list("abcdefgh")
    expected_item1 = 10 * math.exp(-0.5) * (0.5 + 1 / math.sqrt(7)) / 4
    assert cider_d([["a", "b"], ["z"]], [[ref], [["x", "y"]]]) == pytest.approx(expected_item1 / 2)
    # An n-gram in every item's references has idf 0: matching only "a" earns nothing.
    assert cider_d([["a"], ["a"]], [[["a", "b"]], [["a", "c"]]]) == 0.0
