"""The built-in encoder's text side as one ONNX graph, for queries that must start in about a second.

MiniLM → mean pooling → L2 → trained text head, exported from the very torch modules the pipeline embeds with,
and run with onnxruntime and the `tokenizers` library: a text search imports neither torch (~2 s here) nor
transformers' modeling code (~4 s). The graph is written beside the encoder (`text_query.onnx`) when the pipeline
trains it, or on the first text query that finds it missing; `tests/test_align.py` checks it gives the torch
encoder's vectors.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ravlm_core.encoders.packages import text_max_length, text_model_dir
from ravlm_core.vectors import unit_rows_np

log = logging.getLogger(__name__)

ONNX_FILE = "text_query.onnx"
META_FILE = "text_query.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def text_query_ready(model_dir: Path, tag: str) -> bool:
    """Whether `model_dir` holds an exported text graph for the encoder `tag`."""
    meta = Path(model_dir) / META_FILE
    return (Path(model_dir) / ONNX_FILE).is_file() and meta.is_file() and json.loads(meta.read_text())["tag"] == tag


def export_text_query(encoder, model_dir: Path) -> Path | None:
    """Write the text graph of a loaded `BuiltinEncoder` into `model_dir` (atomically); None, with a warning, when
    the export cannot be done here (the torch path keeps working, only slower to start)."""
    import torch

    from ravlm_core.encoders.runtime import export_onnx

    class TextGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.head = encoder._text.model, encoder._heads.text

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return self.head(torch.nn.functional.normalize(mean, dim=-1))

    example = encoder._text.tokenizer(["a red circle", "what colour is the shape?"], padding=True,
                                      return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    return export_onnx(TextGraph(), tuple(example[name] for name in INPUTS), model_dir, ONNX_FILE, META_FILE,
                       {"tag": encoder.tag, "dim": encoder.dim}, input_names=list(INPUTS),
                       dynamic_axes={**axes, "vectors": {0: "batch"}}, what="text searches will load torch")


class TextQueryEncoder:
    """Texts → the built-in encoder's unit vectors, through onnxruntime (text only: `embed_images` is not here)."""

    def __init__(self, model_dir: str | Path):
        import onnxruntime
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        meta = json.loads((model_dir / META_FILE).read_text())
        self.tag, self.dim = meta["tag"], int(meta["dim"])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about constant folding are noise for a user
        self.session = onnxruntime.InferenceSession(str(model_dir / ONNX_FILE), options,
                                                    providers=["CPUExecutionProvider"])
        # The same tokenization the torch path asks of transformers: truncate to sentence-transformers' length,
        # pad to the longest text of the batch.
        self.tokenizer = Tokenizer.from_file(str(text_model_dir() / "tokenizer.json"))
        self.tokenizer.enable_truncation(text_max_length())
        pad = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=pad, pad_token="[PAD]")

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """float32 [n, dim] unit rows."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return unit_rows_np(self.session.run(["vectors"], feeds)[0])
