"""Consensus re-ranking of generated captions against retrieved ones (Devlin et al. 2015; Mun et al. 2017).

A beam search's best hypothesis by log-probability is often generic ("a man is standing"): what the decoder
finds likely whatever the image. Among its finished hypotheses, the one whose words the retrieved captions share
is more often right. Agreement is CIDEr's: cosine of TF-IDF n-gram vectors (n = 1..4), averaged over the
retrieved captions and over n, with document frequencies from the knowledge base's captions, so shared rare
words ("skateboard") count and shared "a ... is" does not. Tokens are word-piece ids: the decoder's own units.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

MAX_N = 4
# Where the consensus ties (e.g. no retrieved caption shares a word), the decoder's own score decides.
LM_WEIGHT = 0.01


def ngram_counts(ids: Sequence[int]) -> Counter:
    """Every n-gram (n = 1..MAX_N) of a piece sequence, as space-joined ids, with its count."""
    return Counter(" ".join(map(str, ids[i : i + n])) for n in range(1, MAX_N + 1) for i in range(len(ids) - n + 1))


def document_frequencies(documents: Iterable[Sequence[int]], min_df: int = 2) -> tuple[dict[str, int], int]:
    """(n-gram -> how many documents hold it, for those in at least `min_df`; the number of documents).
    N-grams below `min_df` are left out (most of them, and what a saved model need not carry): they count as 1."""
    frequencies: Counter = Counter()
    n_docs = 0
    for ids in documents:
        frequencies.update(ngram_counts(ids).keys())
        n_docs += 1
    return {gram: n for gram, n in frequencies.items() if n >= min_df}, n_docs


class ConsensusScorer:
    """Agreement of a candidate with retrieved captions under fixed document frequencies (empty: plain TF)."""

    def __init__(self, frequencies: dict[str, int], n_docs: int):
        self.frequencies, self.n_docs = frequencies, max(n_docs, 1)

    def _vectors(self, ids: Sequence[int]) -> list[dict[str, float]]:
        """Per n, the TF-IDF vector of the sequence's n-grams, unit length."""
        by_n: list[dict[str, float]] = [{} for _ in range(MAX_N)]
        for gram, count in ngram_counts(ids).items():
            idf = math.log(self.n_docs / self.frequencies.get(gram, 1)) if self.frequencies else 1.0
            by_n[gram.count(" ")][gram] = count * max(idf, 0.0)
        for vector in by_n:
            norm = math.sqrt(sum(v * v for v in vector.values()))
            for gram in vector:
                vector[gram] = vector[gram] / norm if norm else 0.0
        return by_n

    def agreement(self, candidate: Sequence[int], retrieved: Sequence[Sequence[int]]) -> float:
        """Mean over the retrieved captions and over n of the n-gram vectors' cosine, in [0, 1]; 0 without any."""
        return _mean_cosine(self._vectors(candidate), [self._vectors(r) for r in retrieved])

    def choose(self, hypotheses: Sequence[tuple[float, list[int]]], retrieved: Sequence[Sequence[int]]) -> list[int]:
        """The hypothesis (score, ids) most in agreement with `retrieved`; the best-scored one without any."""
        if not retrieved:
            return hypotheses[0][1]
        theirs = [self._vectors(r) for r in retrieved]  # once per item, not once per hypothesis
        return max(hypotheses, key=lambda h: _mean_cosine(self._vectors(h[1]), theirs) + LM_WEIGHT * h[0])[1]


def _mean_cosine(mine: list[dict[str, float]], theirs: list[list[dict[str, float]]]) -> float:
    """Unit n-gram vectors (per n) of one caption against those of each other caption: the mean cosine over the
    others and over n; 0 without others."""
    if not theirs:
        return 0.0
    total = sum(sum(v * b.get(g, 0.0) for g, v in a.items()) for other in theirs for a, b in zip(mine, other))
    return total / (MAX_N * len(theirs))
