"""Image/text encoders behind one protocol and one factory, `load_encoder`; importing this never imports torch."""
from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from ravlm_core.encoders.packages import SPEC_FILE
from ravlm_core.errors import UserError

if TYPE_CHECKING:
    from PIL import Image

KINDS = ("builtin",)

# Heavy names resolved on first use, so `from ravlm_core.encoders import train_builtin_encoder` stays cheap.
_LAZY = {
    "BuiltinEncoder": "ravlm_core.encoders.builtin",
    "train_builtin_encoder": "ravlm_core.encoders.training",
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


@dataclass(frozen=True)
class EncoderRef:
    """The encoder a run uses, as flows hand it to tasks: where its weights are and the tags naming its tables;
    never the model itself (tasks load it in the process that needs it)."""

    # What `load_encoder` opens: a folder (a shared ref when models live on object storage) or a hub id.
    model_ref: str
    model_tag: str  # names its image / text vector tables (`Encoder.tag`)
    dim: int
    question_tag: str  # the question encoder's tag: names the question vector table

    def to_json(self) -> dict:
        """`{model_ref, model_tag, dim, question_tag}`, as the embed flow reports it."""
        return asdict(self)


def load_encoder(ref: str | Path, *, device: str = "cpu") -> Encoder:
    """Open an encoder from a built-in folder, a local Hugging Face folder, or a hub id.

    Args:
        ref: a folder written by `train_builtin_encoder` (holds encoder.json), a local Hugging Face CLIP/SigLIP
            folder (holds config.json), or a hub id (read from the local cache when HF_HUB_OFFLINE is set).
        device: torch device the encoder runs on ("cpu", "cuda", "cuda:1", ...).

    Returns:
        An `Encoder`.

    Raises:
        UserError: encoder.json names an unknown kind or is malformed; the model type is not CLIP/SigLIP; a
            folder has neither file, or `ref` is no local folder and the hub cannot serve it.
    """
    path = Path(ref)
    if path.is_dir() and (path / SPEC_FILE).is_file():
        _check_kind(path / SPEC_FILE)
        from ravlm_core.encoders.builtin import BuiltinEncoder

        return BuiltinEncoder(path, device=device)
    if path.is_dir() and not (path / "config.json").is_file():
        raise UserError(
            f"{path} holds neither {SPEC_FILE} (a built-in encoder) nor config.json (a Hugging Face model): "
            "pass the folder that train_builtin_encoder returned or a saved CLIP/SigLIP model"
        )
    from ravlm_core.encoders.hf import HFEncoder

    return HFEncoder(ref, device=device)


def describe_encoder(ref: str | Path) -> tuple[str, int]:
    """The (tag, dim) `load_encoder(ref)` would have, read from the model's files without loading its weights."""
    path = Path(ref)
    if path.is_dir() and (path / SPEC_FILE).is_file():
        _check_kind(path / SPEC_FILE)
        spec = json.loads((path / SPEC_FILE).read_text())
        return spec["tag"], int(spec["dim"])
    from transformers import AutoConfig

    from ravlm_core.encoders.hf import describe_hf_encoder
    from ravlm_core.model_files import resolve_folder

    folder = resolve_folder(ref)
    return describe_hf_encoder(ref, folder, AutoConfig.from_pretrained(folder))


class LazyEncoder:
    """An `Encoder` that knows its tag and dim from files and loads its weights on the first embed call, so a run
    with nothing new to embed loads no model."""

    def __init__(self, tag: str, dim: int, load: Callable[[], Encoder]):
        self.tag, self.dim, self._load, self._encoder = tag, dim, load, None

    def _loaded(self) -> Encoder:
        if self._encoder is None:
            self._encoder = self._load()
        return self._encoder

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self._loaded().embed_images(images) if images else np.zeros((0, self.dim), np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self._loaded().embed_texts(texts) if texts else np.zeros((0, self.dim), np.float32)

    @property
    def preprocess(self) -> Callable[[Image.Image], np.ndarray]:
        return self._loaded().preprocess

    @property
    def batch_size(self) -> int:
        return self._loaded().batch_size

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._loaded().embed_pixels(pixels) if len(pixels) else np.zeros((0, self.dim), np.float32)


def _check_kind(spec_path: Path) -> None:
    try:
        kind = json.loads(spec_path.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{spec_path} is not a JSON object ({err}); retrain the encoder") from err
    if kind not in KINDS:
        raise UserError(f"{spec_path}: unknown encoder kind {kind!r}; supported kinds: {', '.join(KINDS)}")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
