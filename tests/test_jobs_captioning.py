"""Consensus caption transfer beats nearest-neighbour transfer when the nearest neighbour is an outlier."""
import numpy as np

from ravlm_core.jobs.captioning import consensus_captions, direct_captions
from ravlm_core.retrieval.search import Neighbours


def test_consensus_prefers_the_caption_most_neighbours_agree_with():
    vecs = {"a red circle": np.array([1, 0, 0], np.float32), "a red ring": np.array([0.95, 0.31, 0], np.float32),
            "a blue square": np.array([0, 0, 1], np.float32)}
    captions = {"n1": "a blue square", "n2": "a red circle", "n3": "a red ring", "n4": "a red circle"}
    # The single nearest image is the outlier; its caption must not win.
    neighbours = Neighbours([["n1", "n2", "n3", "n4"]], [[0.95, 0.94, 0.94, 0.93]])
    assert consensus_captions(neighbours, captions, vecs) == ["a red circle"]


def test_consensus_empty_without_captioned_neighbours():
    assert consensus_captions(Neighbours([["x"]], [[0.9]]), {}, {}) == [""]


def test_direct_captions_pick_the_closest_text():
    texts = ["a", "b"]
    text_vectors = np.eye(2, dtype=np.float32)
    images = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    assert direct_captions(images, texts, text_vectors) == ["b", "a"]
    assert direct_captions(images, [], np.zeros((0, 2), np.float32)) == ["", ""]
