"""Evaluation metrics for VQA answers, text-to-image retrieval and captions, as plain JSON-ready dicts."""
from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

import numpy as np

from ravlm_core.evaluate.ptb_tokenize import coco_tokenize

# nDCG is reported at this cutoff whatever `ks` asks for recall and hits at.
NDCG_K = 10

_WHITESPACE = re.compile(r"\s+")


def normalize_answer(answer: str) -> str:
    """Canonical form of a short answer: lowercase, trimmed, single spaces, no trailing punctuation.

    So "Red " and "red." compare equal, while inner punctuation ("t-shirt") is kept.
    """
    collapsed = _WHITESPACE.sub(" ", answer.lower()).strip()
    return collapsed.rstrip(string.punctuation).rstrip()


def _check_lengths(**columns: Sequence) -> int:
    """The common length of the given columns; raises ValueError on a mismatch or when empty."""
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have one row per item, got lengths {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"nothing to score: {', '.join(lengths)} are empty")
    return n


def _normalized(answers: Sequence[str], column: str) -> list[str]:
    """normalize_answer over a column; raises TypeError naming the first row that is not a string."""
    bad = next((i for i, answer in enumerate(answers) if not isinstance(answer, str)), None)
    if bad is not None:
        raise TypeError(f"{column}[{bad}] is {answers[bad]!r}, not a string; fill missing answers with ''")
    return [normalize_answer(answer) for answer in answers]


def _require_strings(values: Sequence, column: str) -> None:
    """Raises TypeError naming the first row that is not a string."""
    bad = next((i for i, value in enumerate(values) if not isinstance(value, str)), None)
    if bad is not None:
        raise TypeError(f"{column}[{bad}] is {values[bad]!r}, not a string")


def _require_nested_strings(groups: Sequence[Sequence[str]], column: str) -> None:
    """Raises ValueError on a bare-string group (its characters would pass for answers), TypeError on a non-string."""
    bare = [i for i, group in enumerate(groups) if isinstance(group, str)]
    if bare:
        raise ValueError(f"{column}{bare[:10]} are strings; wrap each item's texts in a list")
    for i, group in enumerate(groups):
        _require_strings(group, f"{column}[{i}]")


def vqa_metrics(y_true: Sequence[str], y_pred: Sequence[str], question_types: Sequence[str] | None = None) -> dict:
    """Exact-match VQA scores after `normalize_answer`.

    Macro precision/recall/F1 average over every label seen in y_true or y_pred (a label only ever
    predicted scores 0, so hallucinated answers cost). `labels` orders the rows (truth) and columns
    (prediction) of `confusion`. `per_question_type` is empty when no question types are given.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if question_types is None:
        _check_lengths(y_true=y_true, y_pred=y_pred)
    else:
        _check_lengths(y_true=y_true, y_pred=y_pred, question_types=question_types)
    truth = _normalized(y_true, "y_true")
    pred = _normalized(y_pred, "y_pred")
    labels = sorted(set(truth) | set(pred))
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, pred, labels=labels, average="macro", zero_division=0
    )
    per_type = {}
    for qtype in sorted(set(question_types or [])):
        rows = [i for i, t in enumerate(question_types) if t == qtype]
        per_type[qtype] = {
            "n": len(rows),
            "accuracy": float(accuracy_score([truth[i] for i in rows], [pred[i] for i in rows])),
        }
    return {
        "n": len(truth),
        "accuracy": float(accuracy_score(truth, pred)),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "macro_f1": float(f1),
        "per_question_type": per_type,
        "labels": labels,
        "confusion": confusion_matrix(truth, pred, labels=labels).tolist(),
    }


# --- VQAv2 soft accuracy, as the official evaluation (GT-Vision-Lab/VQA vqaEval.py, master a013f00) computes it ---
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've"
}
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = frozenset(["a", "an", "the"])
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# "(?!<=\d)" is the official typo for a lookbehind: it removes every period not followed by a digit.
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_VQA_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")


def normalize_vqa_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it: processPunctuation then processDigitArticle.

    Punctuation marks are deleted when one touches a space or the answer has a digit-comma-digit ("1,000"),
    otherwise replaced by a space; periods go unless a digit follows; then lowercase, number words up to ten
    become digits, articles go and apostrophe-less contractions get theirs: "Two" -> "2", "the dog." -> "dog",
    "dont" -> "don't". The apostrophe and ":" are kept, as officially.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out, has_digit_comma = text, _VQA_DIGIT_COMMA.search(text) is not None
    for mark in _VQA_PUNCT:
        touches_space = mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if touches_space or has_digit_comma else " ")
    out = _VQA_PERIOD.sub("", out, 32)  # the official code passes re.UNICODE (32) as sub's count
    words = [_VQA_NUMBERS.get(word, word) for word in out.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words if word not in _VQA_ARTICLES)


def _vqa_item_accuracy(prediction: str, humans: Sequence[str]) -> float:
    """Mean over the humans of min(1, matches among the other humans / 3): 2 of 10 -> 0.6, 3 -> 0.9, 4+ -> 1."""
    humans = [h.replace("\n", " ").replace("\t", " ").strip() for h in humans]
    prediction = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len(set(humans)) > 1:  # officially answers are normalised only when the humans disagree
        humans = [normalize_vqa_answer(h) for h in humans]
        prediction = normalize_vqa_answer(prediction)
    matches = sum(h == prediction for h in humans)
    # Leaving out a matching human leaves matches - 1 others that match, any other human leaves all of them.
    return sum(min(1.0, (matches - (h == prediction)) / 3) for h in humans) / len(humans)


def vqa_soft_accuracy(
    predictions: Sequence[str], human_answers: Sequence[Sequence[str]], question_types: Sequence[str] | None = None
) -> dict:
    """VQAv2 soft accuracy of free-form answers against each question's human answers (10 in VQAv2).

    Follows the official vqaEval.py exactly, on a 0-1 scale instead of its 0-100: when a question's human answers
    differ, they and the prediction go through `normalize_vqa_answer`; when all humans agree, neither is normalised
    (only stripped), so "Yes" scores 0 against ten "yes". Each item scores the mean over its humans of
    min(1, #other humans giving the prediction / 3). `per_question_type` is there only when types are given.
    Raises ValueError on mismatched lengths, a bare-string item or an item without human answers, TypeError on
    a prediction or human answer that is not a string.
    """
    if question_types is None:
        _check_lengths(predictions=predictions, human_answers=human_answers)
    else:
        _check_lengths(predictions=predictions, human_answers=human_answers, question_types=question_types)
    _require_strings(predictions, "predictions")
    _require_nested_strings(human_answers, "human_answers")
    empty = next((i for i, humans in enumerate(human_answers) if not humans), None)
    if empty is not None:
        raise ValueError(f"human_answers[{empty}] is empty; every question needs at least one human answer")
    scores = [_vqa_item_accuracy(p, humans) for p, humans in zip(predictions, human_answers)]
    result: dict = {"n": len(scores), "soft_accuracy": float(np.mean(scores))}
    if question_types is not None:
        result["per_question_type"] = {}
        for qtype in sorted(set(question_types)):
            rows = [score for score, t in zip(scores, question_types) if t == qtype]
            result["per_question_type"][qtype] = {"n": len(rows), "soft_accuracy": float(np.mean(rows))}
    return result


def _first_relevant_rank(ranked: Sequence[str], relevant: set[str]) -> float:
    """1-based rank of the first relevant id, or inf when none was returned."""
    return next((rank for rank, item in enumerate(ranked, start=1) if item in relevant), math.inf)


def _ndcg(ranked_ids: Sequence[Sequence[str]], relevant: Sequence[set[str]]) -> float:
    """Mean nDCG@NDCG_K with binary gains, via sklearn.metrics.ndcg_score.

    ndcg_score only sees the candidates it is given, so relevant ids that were NOT retrieved are
    appended after padding (beyond rank NDCG_K): they then count in the ideal DCG but earn nothing.
    """
    from sklearn.metrics import ndcg_score

    gain_rows = []
    for ranked, rel in zip(ranked_ids, relevant):
        gains = [1.0 if item in rel else 0.0 for item in ranked]
        gains += [0.0] * max(0, NDCG_K - len(gains))
        gains += [1.0] * len(rel - set(ranked))
        gain_rows.append(gains)
    width = max(len(row) for row in gain_rows)
    y_true = np.zeros((len(gain_rows), width))
    for i, row in enumerate(gain_rows):
        y_true[i, : len(row)] = row
    # Strictly decreasing scores reproduce each query's rank order (padding columns are gain 0).
    y_score = np.tile(np.arange(width, 0, -1, dtype=float), (len(gain_rows), 1))
    return float(ndcg_score(y_true, y_score, k=NDCG_K))


def retrieval_metrics(
    ranked_ids: Sequence[Sequence[str]], relevant: Sequence[set[str]], ks: Sequence[int] = (1, 5, 10)
) -> dict:
    """Ranking quality of retrieved ids against the relevant set of each query.

    recall@k is recall as information retrieval defines it: the share of a query's relevant ids found in its top k,
    averaged over queries (a query with more than k relevant ids cannot reach 1). hit@k is the share of queries
    with at least one relevant id in the top k (what text-to-image papers often print as "R@K"). ndcg@10 uses
    binary gains; mrr is the mean reciprocal rank of the first relevant id (0 when none was retrieved). A query
    with an empty relevant set scores 0 throughout.
    """
    n = _check_lengths(ranked_ids=ranked_ids, relevant=relevant)
    relevant = [set(rel) for rel in relevant]
    first_ranks = np.array([_first_relevant_rank(r, rel) for r, rel in zip(ranked_ids, relevant)])
    scores: dict = {"n_queries": n}
    for k in ks:
        scores[f"recall@{k}"] = float(np.mean([len(rel.intersection(r[:k])) / len(rel) if rel else 0.0
                                               for r, rel in zip(ranked_ids, relevant)]))
    for k in ks:
        scores[f"hit@{k}"] = float(np.mean(first_ranks <= k))
    scores[f"ndcg@{NDCG_K}"] = _ndcg(ranked_ids, relevant)
    scores["mrr"] = float(np.mean(1.0 / first_ranks))
    return scores


def _require_references(references: Sequence[Sequence[str]]) -> None:
    """Raises ValueError on a bare-string or empty reference list, TypeError on a reference that is not a string."""
    _require_nested_strings(references, "references")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"caption items {empty[:10]} have no reference caption; drop them or add references")


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Corpus caption scores from coco-caption's own scorers (pycocoevalcap), after `coco_tokenize`.

    bleu1, bleu4: corpus BLEU with the reference length closest to each prediction (coco-caption's "closest"),
    0-1. rouge_l: mean over items of ROUGE-L with beta 1.2, from the best precision and best recall over that
    item's references. cider: CIDEr-D (clipped n-gram counts, Gaussian length penalty sigma 6, x10), typically
    0-10. Its idf comes from the references of every item passed in, so an item's CIDEr depends on the whole
    evaluated set, as in coco-caption: score a split in one call, never batch by batch; one item alone scores 0.
    Raises ValueError on mismatched lengths, an item whose references are empty or a bare string, or when no
    reference holds a word; TypeError on a non-string caption.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_lengths(predictions=predictions, references=references)
    _require_strings(predictions, "predictions")
    _require_references(references)
    res = {i: [coco_tokenize(pred)] for i, pred in enumerate(predictions)}
    gts = {i: [coco_tokenize(ref) for ref in refs] for i, refs in enumerate(references)}
    if not any(ref for refs in gts.values() for ref in refs):
        raise ValueError("no reference caption holds a word after tokenisation, so CIDEr has no idf")
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)  # verbose=0: nothing on stdout, so --json stays clean
    rouge_l, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"n": len(res), "bleu1": float(bleu[0]), "bleu4": float(bleu[3]), "rouge_l": float(rouge_l),
            "cider": float(cider)}
