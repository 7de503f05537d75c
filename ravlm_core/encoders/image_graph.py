"""The built-in encoder's image side as one ONNX graph for CPU embedding: uint8 pixels → normalise → folded
EfficientNet-Lite0 → pool → image head.

onnxruntime runs this network about 1.5x faster than the folded torch network on this project's 2-core CPU (its
blocked NCHWc convolutions stay in cache; `benchmarks/embed_bench.py` measures both), with vectors within 1e-5
of torch's (tests/test_encoders.py). The graph is written beside the encoder (`image_embed.onnx`) the first time
a CPU process embeds images with it; when the export fails, the torch network runs instead.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ONNX_FILE = "image_embed.onnx"
META_FILE = "image_embed.json"
# Bump when the graph's construction changes, so older exported files are rebuilt instead of trusted.
GRAPH_VERSION = 1


def image_graph_ready(model_dir: Path, tag: str, image_size: int) -> bool:
    """Whether `model_dir` holds an exported image graph of this encoder, image size and graph version."""
    meta = Path(model_dir) / META_FILE
    if not ((Path(model_dir) / ONNX_FILE).is_file() and meta.is_file()):
        return False
    return json.loads(meta.read_text()) == {"tag": tag, "image_size": image_size, "version": GRAPH_VERSION}


def export_image_graph(image_tower, head, model_dir: Path, tag: str) -> Path | None:
    """Write the image graph of a loaded image tower (`backbones.ImageBackbone`) and its trained head into
    `model_dir`, atomically; None, with a warning, when the export cannot be done here."""
    import torch

    from ravlm_core.encoders.runtime import export_onnx

    class ImageGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network, self.head = image_tower.network, head

        def forward(self, pixels):  # uint8 [n, S, S, 3] → [n, dim], not yet L2-normalised
            return self.head(self.network(image_tower.preprocess.normalise(pixels)))

    size = image_tower.preprocess.image_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    return export_onnx(ImageGraph().cpu(), (example,), model_dir, ONNX_FILE, META_FILE,
                       {"tag": tag, "image_size": size, "version": GRAPH_VERSION}, input_names=["pixels"],
                       dynamic_axes={"pixels": {0: "batch"}, "vectors": {0: "batch"}},
                       what="images will be embedded with torch")


class ImageGraphRunner:
    """uint8 [n, S, S, 3] → float32 [n, dim] through onnxruntime, on `threads` cores."""

    def __init__(self, path: Path, threads: int, spinning: bool = False):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # constant-folding notices are noise for a user
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one chain of convolutions: nothing runs beside it
        # Idle threads sleep instead of spinning between operators, leaving those moments to embedding's reader
        # thread: embed_bench measured end to end 0.86 of the ceiling with spinning, 0.91-0.92 without, and the
        # model alone within noise of each other.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(["vectors"], {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)})[0]
