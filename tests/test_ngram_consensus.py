"""Consensus re-ranking: TF-IDF n-gram agreement of a generated caption with the retrieved ones."""
from __future__ import annotations

import pytest

from ravlm_core.generators.ngram_consensus import (
    ConsensusScorer,
    document_frequencies,
    ngram_counts,
)

# Word-piece ids as the decoder writes them: 1 "a", 2 "dog", 3 "runs", 4 "on", 5 "grass", 6 "man", 7 "sits".
DOG_ON_GRASS, DOG, MAN_SITS = [1, 2, 3, 4, 1, 5], [1, 2], [1, 6, 7]


def test_ngrams_up_to_four_with_counts():
    counts = ngram_counts([1, 2, 1, 2])
    assert counts["1"] == 2 and counts["1 2"] == 2 and counts["2 1"] == 1 and counts["1 2 1 2"] == 1
    assert len(counts) == 2 + 2 + 2 + 1


def test_document_frequencies_keep_what_several_documents_share():
    frequencies, n_docs = document_frequencies([DOG_ON_GRASS, DOG, MAN_SITS])
    assert n_docs == 3 and frequencies["1"] == 3 and frequencies["1 2"] == 2 and frequencies["2"] == 2
    assert "5" not in frequencies and "6 7" not in frequencies  # in one document only: left out, counted as 1


def test_it_chooses_the_hypothesis_the_retrieved_captions_share_words_with():
    frequencies, n_docs = document_frequencies([DOG_ON_GRASS, DOG, MAN_SITS, [1, 6], [1, 2, 3]])
    scorer = ConsensusScorer(frequencies, n_docs)
    retrieved = [[1, 2, 3], [1, 2, 3, 4, 1, 5]]
    assert scorer.agreement(DOG_ON_GRASS, retrieved) > scorer.agreement(MAN_SITS, retrieved)
    assert scorer.agreement(DOG_ON_GRASS, [DOG_ON_GRASS]) == pytest.approx(1.0)
    # "a" is in every document: sharing only it agrees with nothing.
    assert scorer.agreement([1, 6], [[1, 5]]) == 0.0
    hypotheses = [(-0.5, MAN_SITS), (-0.9, DOG_ON_GRASS)]  # best by log-probability first
    assert scorer.choose(hypotheses, retrieved) == DOG_ON_GRASS
    assert scorer.choose(hypotheses, []) == MAN_SITS  # nothing retrieved: the decoder's own best
    # Equal agreement: the decoder's score breaks the tie.
    assert scorer.choose([(-0.1, [6]), (-0.2, [7])], [[5]]) == [6]


def test_without_frequencies_every_ngram_weighs_the_same():
    scorer = ConsensusScorer({}, 1)
    assert scorer.agreement([1, 6], [[1, 5]]) > 0.0
