"""Image/text encoders behind one protocol and one factory, `load_encoder`; importing this never imports torch."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

SPEC_FILE = "encoder.json"
KINDS = ("builtin",)

# Heavy names resolved on first use, so `from ravlm_core.encoders import train_builtin_encoder` stays cheap.
_LAZY = {
    "BuiltinEncoder": "ravlm_core.encoders.builtin",
    "train_builtin_encoder": "ravlm_core.encoders.builtin",
    "HFEncoder": "ravlm_core.encoders.hf",
    "QuestionEncoder": "ravlm_core.encoders.questions",
    "question_encoder_tag": "ravlm_core.encoders.questions",
}


class Encoder(Protocol):
    """Embeds images and texts into one space; rows are float32 [n, dim] with L2 norm 1."""

    # Names encoder + weights hash + preprocessing; [a-z0-9_-] so it can name tables and folders.
    tag: str
    dim: int

    def embed_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


def load_encoder(ref: str | Path, *, device: str = "cpu") -> Encoder:
    """Open an encoder from a built-in folder, a local Hugging Face folder, or a hub id.

    Args:
        ref: a folder written by `train_builtin_encoder` (holds encoder.json), a local Hugging Face CLIP/SigLIP
            folder (holds config.json), or a hub id (read from the local cache when HF_HUB_OFFLINE is set).
        device: torch device the encoder runs on ("cpu", "cuda", "cuda:1", ...).

    Returns:
        An `Encoder`.

    Raises:
        ValueError: encoder.json names an unknown kind or is malformed; the model type is not CLIP/SigLIP.
        FileNotFoundError: a folder has neither file, or `ref` is no local folder and the hub cannot serve it.
    """
    path = Path(ref)
    if path.is_dir() and (path / SPEC_FILE).is_file():
        _check_kind(path / SPEC_FILE)
        from ravlm_core.encoders.builtin import BuiltinEncoder

        return BuiltinEncoder(path, device=device)
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} holds neither {SPEC_FILE} (a built-in encoder) nor config.json (a Hugging Face model): "
            "pass the folder that train_builtin_encoder returned or a saved CLIP/SigLIP model"
        )
    from ravlm_core.encoders.hf import HFEncoder

    return HFEncoder(ref, device=device)


def _check_kind(spec_path: Path) -> None:
    try:
        kind = json.loads(spec_path.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{spec_path} is not a JSON object ({err}); retrain the encoder") from err
    if kind not in KINDS:
        raise ValueError(f"{spec_path}: unknown encoder kind {kind!r}; supported kinds: {', '.join(KINDS)}")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
