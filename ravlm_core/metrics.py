"""Evaluation metrics for VQA answers, text-to-image retrieval and captions, as plain JSON-ready dicts."""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

# nDCG is reported at this cutoff whatever `ks` asks for recall at.
NDCG_K = 10
# CIDEr-D constants from Vedantam et al. 2015 / coco-caption: n-grams up to 4, length penalty width, x10 scale.
CIDER_MAX_N = 4
CIDER_SIGMA = 6.0
CIDER_SCALE = 10.0

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

    recall@k is the fraction of queries with at least one relevant id in the top k (the usual
    text-to-image R@K); ndcg@10 uses binary gains; mrr is the mean reciprocal rank of the first
    relevant id (0 when none was retrieved). A query with an empty relevant set scores 0 throughout.
    """
    n = _check_lengths(ranked_ids=ranked_ids, relevant=relevant)
    first_ranks = np.array([_first_relevant_rank(r, set(rel)) for r, rel in zip(ranked_ids, relevant)])
    scores: dict = {"n_queries": n}
    for k in ks:
        scores[f"recall@{k}"] = float(np.mean(first_ranks <= k))
    scores[f"ndcg@{NDCG_K}"] = _ndcg(ranked_ids, [set(rel) for rel in relevant])
    scores["mrr"] = float(np.mean(1.0 / first_ranks))
    return scores


def _ngram_counts(tokens: list[str]) -> Counter:
    """Counts of every 1..CIDER_MAX_N-gram in a token list (n-grams are tuples)."""
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, CIDER_MAX_N + 1) for i in range(len(tokens) - n + 1)
    )


def _tfidf(counts: Counter, log_df: dict[tuple, float], log_n_items: float) -> tuple[dict, np.ndarray]:
    """TF-IDF weight of each n-gram and the L2 norm of the vector for each n (index n-1)."""
    weights = {gram: tf * (log_n_items - log_df.get(gram, 0.0)) for gram, tf in counts.items()}
    squares = np.zeros(CIDER_MAX_N)
    for gram, weight in weights.items():
        squares[len(gram) - 1] += weight**2
    return weights, np.sqrt(squares)


def _cider_d_pair(cand: tuple[dict, np.ndarray, int], ref: tuple[dict, np.ndarray, int]) -> float:
    """CIDEr-D similarity of one candidate to one reference, averaged over n (before the x10 scale)."""
    (cand_w, cand_norm, cand_len), (ref_w, ref_norm, ref_len) = cand, ref
    dot = np.zeros(CIDER_MAX_N)
    for gram, weight in cand_w.items():
        # CIDEr-D clips candidate weights at the reference's, so repeating a word cannot pay.
        ref_weight = ref_w.get(gram, 0.0)
        dot[len(gram) - 1] += min(weight, ref_weight) * ref_weight
    denom = cand_norm * ref_norm
    cosine = np.divide(dot, denom, out=np.zeros(CIDER_MAX_N), where=denom > 0)
    length_penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * CIDER_SIGMA**2))
    return float(np.mean(cosine) * length_penalty)


def cider_d(predictions: list[list[str]], references: list[list[list[str]]]) -> float:
    """Corpus CIDEr-D (Vedantam et al. 2015, coco-caption variant) of tokenised captions.

    Document frequencies come from the references: an n-gram's df is the number of items whose
    references contain it, and idf = log(n_items) - log(max(1, df)). Each item scores
    10 * mean over its references of the clipped, length-penalised tf-idf cosine averaged over
    n = 1..4; the corpus score is the mean over items. With a single item every idf is 0, so 0.
    """
    ref_counts = [[_ngram_counts(ref) for ref in refs] for refs in references]
    df = Counter(gram for counts in ref_counts for gram in set().union(*counts))
    log_df = {gram: math.log(max(1.0, count)) for gram, count in df.items()}
    log_n_items = math.log(len(references))
    item_scores = []
    for cand_tokens, refs_tokens, counts in zip(predictions, references, ref_counts):
        cand = (*_tfidf(_ngram_counts(cand_tokens), log_df, log_n_items), len(cand_tokens))
        pair_scores = [
            _cider_d_pair(cand, (*_tfidf(ref, log_df, log_n_items), len(ref_tokens)))
            for ref, ref_tokens in zip(counts, refs_tokens)
        ]
        item_scores.append(CIDER_SCALE * float(np.mean(pair_scores)))
    return float(np.mean(item_scores))


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Corpus caption scores against one or more references per item.

    bleu4: sacrebleu corpus BLEU-4 (13a tokeniser, lowercased), on a 0-1 scale (sacrebleu's / 100).
    rouge_l: mean over items of the best ROUGE-L F-measure against that item's references (rouge-score).
    cider: CIDEr-D on rouge-score's tokens (lowercase alphanumeric words); typically 0-10, not 0-1.
    Raises ValueError when an item has no reference or its references are a bare string.
    """
    from rouge_score import rouge_scorer, tokenizers
    from sacrebleu.metrics import BLEU

    _check_lengths(predictions=predictions, references=references)
    bare = [i for i, refs in enumerate(references) if isinstance(refs, str)]
    if bare:
        raise ValueError(f"references{bare[:10]} are strings; wrap each item's captions in a list")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"caption items {empty[:10]} have no reference caption; drop them or add references")
    # sacrebleu takes one stream per reference position; None pads items with fewer references.
    n_streams = max(len(refs) for refs in references)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(n_streams)]
    bleu = BLEU(lowercase=True).corpus_score(list(predictions), streams)

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = [scorer.score_multi(list(refs), pred)["rougeL"].fmeasure for pred, refs in zip(predictions, references)]

    tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
    cider = cider_d(
        [tokenizer.tokenize(pred) for pred in predictions],
        [[tokenizer.tokenize(ref) for ref in refs] for refs in references],
    )
    return {"n": len(predictions), "bleu4": bleu.score / 100.0, "rouge_l": float(np.mean(rouge_l)), "cider": cider}
