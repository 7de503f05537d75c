"""A stand-in encoder for stages that only need vectors: deterministic from content, and it counts its work."""
from __future__ import annotations

import hashlib

import numpy as np

from ravlm_core.imaging import SquarePixels


class CountingEncoder:
    """Deterministic vectors from content, and a count of what was encoded (the real encoders are tested apart)."""

    tag, dim = "fake-1", 8
    preprocess = SquarePixels(16)  # a 16x16 thumbnail's bytes decide the vector
    batch_size = 4

    def __init__(self):
        self.images = 0
        self.texts: list[str] = []

    def _rows(self, keys: list[bytes]) -> np.ndarray:
        seeds = [int.from_bytes(hashlib.sha256(k).digest()[:8], "little") for k in keys]
        rows = np.stack([np.random.default_rng(seed).standard_normal(self.dim) for seed in seeds])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.images += len(pixels)
        return self._rows([row.tobytes() for row in pixels])

    def embed_images(self, images) -> np.ndarray:
        return self.embed_pixels(np.stack([self.preprocess(image) for image in images]))

    def embed_texts(self, texts) -> np.ndarray:
        self.texts += list(texts)
        return self._rows([t.encode() for t in texts])
