"""The built-in encoder: frozen PyPI-shipped backbones + trained alignment heads (encoder.json + safetensors)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from ravlm_core.encoders.packages import SPEC_FILE
from ravlm_core.errors import UserError
from ravlm_core.imaging import SquarePixels

log = logging.getLogger(__name__)

HEADS_FILE = "heads.safetensors"
BATCH_SIZE_FILE = "batch_size.json"  # the CPU probe's choice per machine (runtime.measured_batch_size)
TAG_PREFIX = "builtin-"
# First use of an encoder (ONNX export, batch probe) happens once even when shard tasks share it on threads;
# re-entrant because the probe itself embeds.
_FIRST_USE = threading.RLock()


class _Spec(BaseModel):
    # Unknown keys fail loudly: a spec written by a newer version must not be half-understood.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneSpec(_Spec):
    model: str
    package: str
    weights_sha256: str
    feature_dim: int


class PreprocessingSpec(_Spec):
    image_size: int
    resample: Literal["bicubic", "bicubic-torch"] = "bicubic"  # imaging.RESAMPLERS; older specs lack it
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    text_max_length: int


class TrainingSpec(_Spec):
    hidden: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    n_pairs: int
    n_captions: int
    data_fingerprint: str
    final_loss: float | None
    # Written since training holds part of the KB out; older specs lack them (None), and None keeps them out of the
    # tag so those encoders keep theirs.
    n_images: int | None = None
    views: int | None = None  # augmented views per image
    augmentation: str | None = None
    holdout: float | None = None  # share of the images held out to choose the epoch
    heldout_images: int | None = None
    best_epoch: int | None = None  # chosen on the held-out images; the saved heads trained this long on all images
    train_recall: dict[str, float] | None = None  # training.retrieval_recall on (a sample of) the training images
    heldout_recall: dict[str, float] | None = None  # the same on the held-out images, by heads that never saw them
    text_head: Literal["linear", "residual"] | None = None  # align.AlignmentHeads; None (older specs): linear
    image_dropout: float | None = None


class BuiltinSpec(_Spec):
    kind: Literal["builtin"] = "builtin"
    tag: str = ""
    dim: int
    image_backbone: BackboneSpec
    text_backbone: BackboneSpec
    preprocessing: PreprocessingSpec
    training: TrainingSpec


_LATER_TRAINING_FIELDS = ("n_images", "views", "augmentation", "holdout", "heldout_images", "best_epoch",
                          "train_recall", "heldout_recall", "text_head", "image_dropout")


def read_spec(model_dir: Path) -> BuiltinSpec:
    """Parse and validate `model_dir/encoder.json`; errors name the file and the offending key."""
    path = Path(model_dir) / SPEC_FILE
    try:
        return BuiltinSpec.model_validate_json(path.read_text())
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise UserError(f"{path} is not a valid built-in encoder spec ({where}: {first['msg']}): retrain it with "
                        f"train_builtin_encoder") from err


def compute_tag(spec: BuiltinSpec, heads_state: dict) -> str:
    """`builtin-` + 12 hex of sha256(spec without its tag + every head tensor): equal only for equal models."""
    fields = spec.model_dump(exclude={"tag"})
    for name in _LATER_TRAINING_FIELDS:  # absent from specs written before them: hashing None would change tags
        if fields["training"][name] is None:
            del fields["training"][name]
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for name in sorted(heads_state):
        tensor = heads_state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return TAG_PREFIX + digest.hexdigest()[:12]


def save_builtin(out_root: Path, spec: BuiltinSpec, heads) -> Path:
    """Write `out_root/<tag>/` (encoder.json + heads.safetensors) atomically; an existing folder is reused as is."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in heads.state_dict().items()}
    tag = compute_tag(spec, state)
    final = Path(out_root) / tag
    if final.exists():
        log.info("built-in encoder %s already exists; reusing it", final)
        return final
    staging = Path(out_root) / f".{tag}.{os.getpid()}.tmp"
    staging.mkdir(parents=True, exist_ok=True)
    save_file(state, str(staging / HEADS_FILE))
    (staging / SPEC_FILE).write_text(spec.model_copy(update={"tag": tag}).model_dump_json(indent=2))
    try:
        staging.rename(final)
    except OSError:
        # Another process finished the same training first; its folder is identical by construction.
        shutil.rmtree(staging)
    log.info("saved built-in encoder %s", final)
    return final


class BuiltinEncoder:
    """EfficientNet-Lite0 / MiniLM features → trained heads → unit rows of `dim` floats.

    Each tower is built (and its installed weights checked against the ones the heads were trained on) on its
    first use, so a text search loads no image model and an image-only embed run no text model."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        from safetensors.torch import load_file

        from ravlm_core.encoders.align import AlignmentHeads
        from ravlm_core.encoders.backbones import ImageBackbone, TextBackbone

        self.model_dir = Path(model_dir)
        spec = read_spec(self.model_dir)
        state = load_file(str(self.model_dir / HEADS_FILE))
        if compute_tag(spec, state) != spec.tag:
            raise UserError(f"{model_dir}: {HEADS_FILE} or {SPEC_FILE} changed after training (tag mismatch); retrain")
        self.tag, self.dim, self.device, self.spec = spec.tag, spec.dim, device, spec
        self._image_tower = self._text_tower = None
        self._graph = self._batch_size = None
        self._staging: dict = {}  # the pinned host buffer of CUDA batches
        self._heads = AlignmentHeads(ImageBackbone.dim, TextBackbone.dim, spec.training.hidden, spec.dim,
                                     spec.training.text_head or "linear")
        self._heads.load_state_dict(state, strict=True)
        self._heads.eval().requires_grad_(False).to(device)

    @property
    def _image(self):
        from ravlm_core.encoders.backbones import ImageBackbone, ImagePreprocessing
        from ravlm_core.encoders.packages import image_weights_path

        if self._image_tower is None:
            _check_backbone(self.spec.image_backbone, image_weights_path(), self.model_dir)
            pre = self.spec.preprocessing
            self._image_tower = ImageBackbone(ImagePreprocessing(pre.image_size, pre.mean, pre.std, pre.resample),
                                              self.device)
        return self._image_tower

    @property
    def _text(self):
        from ravlm_core.encoders.backbones import TextBackbone
        from ravlm_core.encoders.packages import text_weights_path

        if self._text_tower is None:
            _check_backbone(self.spec.text_backbone, text_weights_path(), self.model_dir)
            self._text_tower = TextBackbone(self.device, self.spec.preprocessing.text_max_length)
        return self._text_tower

    @property
    def preprocess(self) -> SquarePixels:
        """Decoded images → uint8 [S, S, 3]: the resizing half of the preprocessing, picklable for reader processes."""
        return SquarePixels(self.spec.preprocessing.image_size, self.spec.preprocessing.resample)

    @property
    def batch_size(self) -> int:
        """Images per forward pass: measured once per machine on a CPU (cached in the encoder folder)."""
        with _FIRST_USE:  # shard tasks of one process share this encoder: one probe, one choice for all
            return self._measured_batch_size()

    def _measured_batch_size(self) -> int:
        from ravlm_core.encoders.runtime import GPU_BATCH_SIZE, measured_batch_size

        if self._batch_size is None:
            if self.device.startswith("cuda"):
                self._batch_size = GPU_BATCH_SIZE
            else:
                side = self.spec.preprocessing.image_size
                probe = lambda n: self.embed_pixels(np.zeros((n, side, side, 3), np.uint8))  # noqa: E731
                self._batch_size = measured_batch_size(probe, self.model_dir / BATCH_SIZE_FILE)
        return self._batch_size

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [n, S, S, 3] from `preprocess` → float32 [n, dim] unit rows."""
        from ravlm_core.encoders.runtime import empty_rows, inference, to_device, unit_rows
        from ravlm_core.vectors import unit_rows_np

        if not len(pixels):
            return empty_rows(self.dim)
        graph = self._graph_runner()
        if graph is not None:
            return unit_rows_np(graph(pixels))
        with inference(self.device):
            batch = to_device(pixels, self.device, self._staging)
            return unit_rows(self._heads.image(self._image.pixel_features(batch)))

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """float32 [n, dim] unit rows."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_pixels(self.preprocess.many(images))

    def _graph_runner(self):
        """On a CPU the ONNX image graph (exported on first use), unless it cannot be exported; else None.

        Under a lock: shard tasks on threads share this encoder, and one that found the graph half-exported by
        another would fall back to torch, whose vectors differ in the last float bits from the graph's."""
        if self._graph is None:
            with _FIRST_USE:
                return self._open_graph()
        return self._graph or None

    def _open_graph(self):
        from ravlm_core.encoders import image_graph

        if self._graph is None and not self.device.startswith("cuda"):
            import torch

            size = self.spec.preprocessing.image_size
            if not image_graph.image_graph_ready(self.model_dir, self.tag, size):
                image_graph.export_image_graph(self._image, self._heads.image, self.model_dir, self.tag)
            if image_graph.image_graph_ready(self.model_dir, self.tag, size):
                from ravlm_core.encoders.packages import image_weights_path

                _check_backbone(self.spec.image_backbone, image_weights_path(), self.model_dir)
                self._graph = image_graph.ImageGraphRunner(self.model_dir / image_graph.ONNX_FILE,
                                                           torch.get_num_threads())
            else:
                self._graph = False  # export failed: the torch network serves, and we do not retry every batch
        elif self._graph is None:
            self._graph = False  # on a GPU the torch network serves
        return self._graph or None

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """float32 [n, dim] unit rows."""
        from ravlm_core.encoders.runtime import empty_rows, inference, unit_rows

        if not texts:
            return empty_rows(self.dim)
        with inference(self.device):
            return unit_rows(self._heads.text(self._text.features(list(texts))))


def _check_backbone(backbone, path: Path, model_dir: Path) -> None:
    """The tag promises the backbone weights too, so refuse to run heads on different installed weights."""
    from ravlm_core.model_files import file_sha256

    if file_sha256(path) != backbone.weights_sha256:
        raise UserError(
            f"{model_dir} was trained on {backbone.model} weights sha256 {backbone.weights_sha256[:12]}, but "
            f"{path} differs; install {backbone.package} or retrain the encoder"
        )
