"""Hugging Face CLIP / SigLIP encoders from a local folder or a cached hub id (safetensors only, no remote code)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ravlm_core.encoders.runtime import empty_rows, file_sha256, inference, unit_rows

SUPPORTED_MODEL_TYPES = ("clip", "siglip")
# Everything that decides the vectors: architecture, weights, image preprocessing and tokenisation.
TAGGED_FILES = ("config.json", "*.safetensors", "preprocessor_config.json", "processor_config.json", "tokenizer*.json",
                "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model")


def resolve_folder(ref: str | Path) -> Path:
    """A local folder as is; otherwise the hub id's snapshot (cache only when HF_HUB_OFFLINE is set).

    Raises:
        FileNotFoundError: `ref` is no local folder and neither the cache nor the hub can provide it.
    """
    if Path(ref).is_dir():
        return Path(ref)
    from huggingface_hub import constants, snapshot_download

    try:
        offline = constants.HF_HUB_OFFLINE
        return Path(snapshot_download(str(ref), local_files_only=offline, allow_patterns=list(TAGGED_FILES)))
    except (OSError, ValueError) as err:  # missing cache entry, no network, or not a valid repo id
        raise FileNotFoundError(
            f"no local folder {ref} and the hub is unreachable: pass a local folder (a saved CLIP/SigLIP model)"
        ) from err


def folder_digest(folder: Path) -> str:
    """sha256 over the names and contents of every file that decides the vectors."""
    digest = hashlib.sha256()
    for pattern in TAGGED_FILES:
        for path in sorted(folder.glob(pattern)):
            digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def make_tag(model_type: str, name: str, folder: Path) -> str:
    """`hf-<model_type>-<sanitised name>-<12 hex of the folder digest>`, safe for table and folder names."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:48] or "model"
    return f"hf-{model_type}-{slug}-{folder_digest(folder)[:12]}"


class HFEncoder:
    """CLIP or SigLIP through transformers: `get_image_features` / `get_text_features`, L2-normalised."""

    def __init__(self, ref: str | Path, device: str = "cpu"):
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

        folder = resolve_folder(ref)
        config = AutoConfig.from_pretrained(folder)
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            supported = ", ".join(SUPPORTED_MODEL_TYPES)
            raise ValueError(f"{ref}: model_type {config.model_type!r} is not supported; supported: {supported}")
        model_class = {"clip": CLIPModel, "siglip": SiglipModel}[config.model_type]
        self.model = model_class.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        self.model.eval().requires_grad_(False).to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.image_processor = AutoImageProcessor.from_pretrained(folder)
        self.device = device
        self.model_type = config.model_type
        self.max_length = config.text_config.max_position_embeddings
        # A hub id names the model better than its snapshot folder (a commit hash).
        name = Path(ref).name if Path(ref).is_dir() else str(ref)
        self.tag = make_tag(config.model_type, name, folder)
        self.dim = config.projection_dim if config.model_type == "clip" else config.text_config.projection_size

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """float32 [n, dim] unit rows."""
        if not images:
            return empty_rows(self.dim)
        pixels = self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self.device)  # [n, 3, H, W] as the model's processor prepares them
        with inference(self.device):
            return unit_rows(_embeddings(self.model.get_image_features(pixel_values=pixel_values)))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """float32 [n, dim] unit rows."""
        if not texts:
            return empty_rows(self.dim)
        # SigLIP was trained on max_length-padded text and pools the last position, so it must be padded that way;
        # CLIP pools at the end-of-text token, so padding to the longest text in the batch is enough.
        padding = "max_length" if self.model_type == "siglip" else "longest"
        tokens = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        # Only what the text tower takes: a BERT-style tokenizer would also return token_type_ids.
        inputs = {key: tokens[key] for key in ("input_ids", "attention_mask") if key in tokens}
        with inference(self.device):
            return unit_rows(_embeddings(self.model.get_text_features(**inputs)))


def _embeddings(output) -> torch.Tensor:
    """transformers 5 returns a ModelOutput whose pooler_output holds the projected embeddings; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
