"""The question encoder: questions are matched to questions, not to images, so they keep a sentence encoder's
own space. An image-text alignment head trained on captions folds "is there a teal shape?" and "is there not a
teal shape?" onto one point (cosine 0.999); raw MiniLM keeps them apart (0.98 against 1.0 for the same question),
which is what question-weighted voting and the fusion answerer need. It is the same for every image encoder, so
its vectors are keyed by its own tag and shared.
"""
from __future__ import annotations

import numpy as np

from ravlm_core.encoders.backbones import TextBackbone
from ravlm_core.encoders.packages import TEXT_FEATURE_DIM, text_weights_path
from ravlm_core.encoders.runtime import empty_rows, inference, unit_rows
from ravlm_core.model_files import file_sha256


def question_encoder_tag() -> str:
    """`minilm-l6-<weights sha256 prefix>`: changes when the installed weights do."""
    return f"minilm-l6-{file_sha256(text_weights_path())[:12]}"


class QuestionEncoder:
    """all-MiniLM-L6-v2 sentence vectors (mean-pooled, unit rows), as sentence-transformers computes them."""

    dim = TEXT_FEATURE_DIM

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.tag = question_encoder_tag()
        self._text = TextBackbone(device)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """float32 [n, 384] unit rows."""
        if not texts:
            return empty_rows(self.dim)
        with inference(self.device):
            return unit_rows(self._text.features(list(texts)))
