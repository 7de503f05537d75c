"""Hugging Face CLIP / SigLIP encoders from a local folder or a cached hub id (safetensors only, no remote code)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ravlm_core.encoders.runtime import GPU_BATCH_SIZE, empty_rows, inference, to_device, unit_rows
from ravlm_core.errors import UserError
from ravlm_core.model_files import folder_digest, resolve_folder

SUPPORTED_MODEL_TYPES = ("clip", "siglip")
HF_CPU_BATCH_SIZE = 32


class ProcessorPixels:
    """The PIL half of the model's image processor on one image: RGB → uint8 [3, H, W] resized and cropped.

    Rescaling and normalising happen on the device (`HFEncoder.normalise`): a uint8 batch is a quarter of the
    bytes to pass from reader processes and to copy to a GPU."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.image_processor(images=[image.convert("RGB")], do_rescale=False, do_normalize=False,
                                    return_tensors="np")["pixel_values"][0].astype(np.uint8, copy=False)


class HFEncoder:
    """CLIP or SigLIP through transformers: `get_image_features` / `get_text_features`, L2-normalised."""

    def __init__(self, ref: str | Path, device: str = "cpu"):
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

        folder = resolve_folder(ref)
        config = AutoConfig.from_pretrained(folder)
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            supported = ", ".join(SUPPORTED_MODEL_TYPES)
            raise UserError(f"{ref}: model_type {config.model_type!r} is not supported; supported: {supported}")
        model_class = {"clip": CLIPModel, "siglip": SiglipModel}[config.model_type]
        # SDPA: the fused attention kernel (flash / memory-efficient on a GPU); the same math as the eager path.
        self.model = model_class.from_pretrained(folder, use_safetensors=True, trust_remote_code=False,
                                                 attn_implementation="sdpa")
        self.model.eval().requires_grad_(False).to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.image_processor = AutoImageProcessor.from_pretrained(folder)
        self.device = device
        self.model_type = config.model_type
        self.max_length = config.text_config.max_position_embeddings
        self.tag, self.dim = describe_hf_encoder(ref, folder, config)
        # No probe here (it would write into a model folder that may be the hub cache): a transformer's CPU
        # throughput is flat from 16 up, so a fixed size serves; on a GPU bigger batches fill it.
        self.batch_size = GPU_BATCH_SIZE if device.startswith("cuda") else HF_CPU_BATCH_SIZE
        self._staging: dict = {}  # the pinned host buffer of CUDA batches

    @property
    def preprocess(self) -> ProcessorPixels:
        """One decoded image → uint8 [3, H, W], resized and cropped as the model's processor does; picklable."""
        return ProcessorPixels(self.image_processor)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [n, 3, H, W] from `preprocess` → float32 [n, dim] unit rows."""
        if not len(pixels):
            return empty_rows(self.dim)
        with inference(self.device):
            pixel_values = self.normalise(to_device(pixels, self.device, self._staging))
            return unit_rows(_embeddings(self.model.get_image_features(pixel_values=pixel_values)))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """The processor's rescale and normalise steps on a uint8 batch, where the batch is (within 2e-7)."""
        processor, batch = self.image_processor, pixels.float()
        if processor.do_rescale:
            batch = batch.mul_(processor.rescale_factor)
        if processor.do_normalize:
            mean = torch.tensor(processor.image_mean, device=batch.device).view(1, -1, 1, 1)
            std = torch.tensor(processor.image_std, device=batch.device).view(1, -1, 1, 1)
            batch = batch.sub_(mean).div_(std)
        return batch

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """float32 [n, dim] unit rows."""
        if not images:
            return empty_rows(self.dim)
        return self.embed_pixels(np.stack([self.preprocess(image) for image in images]))

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


def describe_hf_encoder(ref: str | Path, folder: Path, config) -> tuple[str, int]:
    """(tag, dim): `hf-<model_type>-<sanitised name>-<12 hex of the folder digest>`, safe for table and folder
    names, and the embedding size, from the files alone."""
    # A hub id names the model better than its snapshot folder (a commit hash).
    name = Path(ref).name if Path(ref).is_dir() else str(ref)
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:48] or "model"
    dim = config.projection_dim if config.model_type == "clip" else config.text_config.projection_size
    return f"hf-{config.model_type}-{slug}-{folder_digest(folder)[:12]}", dim
