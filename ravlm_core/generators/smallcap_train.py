"""Training a SmallCap decoder (`smallcap.py`) on a knowledge base's captions, retrieved for as inference will.

Each example is (image vector, the captions of its leave-one-out neighbours, one reference caption). A share of
the examples sees no retrieved captions, so the same decoder runs without retrieval: the comparison reports make.
Everything frozen is computed once before the loop: the lower layers' states of every target caption, the
memory's word pieces, the output vocabulary (the pieces the captions use).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ravlm_core.generators.ngram_consensus import document_frequencies
from ravlm_core.generators.smallcap import (
    CONSENSUS_FILE,
    META_FILE,
    WEIGHTS_FILE,
    context_captions,
)
from ravlm_core.generators.smallcap_model import (
    SmallCapConfig,
    caption_ids,
    context_bags,
    pad,
    trainable,
    warm_started,
)
from ravlm_core.model_files import written_whole

log = logging.getLogger(__name__)


def smallcap_dir(out_root: Path, fingerprint: str, config: SmallCapConfig) -> Path:
    """Where the decoder for this training data and config lives (whether trained yet or not)."""
    key = hashlib.blake2b(json.dumps([fingerprint, asdict(config)]).encode(), digest_size=6).hexdigest()
    return Path(out_root) / f"smallcap-{key}"


def train_smallcap(image_vectors: np.ndarray, neighbour_captions: list[list[list[str]]], captions: list[str],
                   out_root: Path, fingerprint: str, config: SmallCapConfig = SmallCapConfig(),
                   device: str = "cpu") -> Path:
    """Train (or reuse) a SmallCap decoder; returns its folder `out_root/smallcap-<hash>`.

    Args:
        image_vectors: float32 [n, d], per example its image's vector.
        neighbour_captions: per example, per retrieved neighbour (best first, leave-one-out) all its captions.
        captions: per example, the caption to learn.
        fingerprint: identifies the training data (KB content, encoder, k); with `config` it names the model.
    """
    from safetensors.torch import save_file

    model_dir = smallcap_dir(out_root, fingerprint, config)
    if (model_dir / META_FILE).exists():
        return model_dir
    started, cpu_started = time.perf_counter(), time.process_time()
    model, tokenizer, bert_config = warm_started(config, image_vectors.shape[1])
    model.to(device)
    params = trainable(model, config.tune)
    targets = [ids + [tokenizer.sep_token_id] for ids in caption_ids(tokenizer, captions, config.max_caption_tokens)]
    vocab = sorted({i for ids in targets for i in ids})
    to_vocab = torch.full((bert_config.vocab_size,), -100, dtype=torch.long)
    to_vocab[vocab] = torch.arange(len(vocab))
    pieces, counts = context_bags(tokenizer, [context_captions(n, config.context_captions) for n in neighbour_captions],
                                  config.context_pieces)  # [n, m]
    lower = _lower_states(model, [[tokenizer.cls_token_id] + t[:-1] for t in targets], device)  # [n] of [t, h]
    vectors = torch.from_numpy(np.ascontiguousarray(image_vectors, dtype=np.float32))
    vocab_ids = torch.tensor(vocab, device=device)

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    # Large KBs train for fewer epochs: cost follows optimiser steps, and easy-VQA's 4,000 captions (24 distinct)
    # need no more steps than flickr8k's 2,000 distinct ones.
    per_epoch = -(-len(captions) // config.batch_size)
    epochs = max(1, min(config.epochs, config.max_steps // per_epoch))
    steps = epochs * per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=max(steps, 4))
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(captions), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            shown = torch.from_numpy(rng.random(len(idx)) >= config.context_dropout)[:, None]  # [b, 1]
            states, mask = _stack([lower[i] for i in idx])  # [b, t, h], [b, t]
            labels, _ = pad([targets[i] for i in idx], value=-100)  # [b, t]
            memory, memory_mask = model.memory(vectors[idx].to(device), pieces[idx].to(device),
                                               (counts[idx] * shown).to(device))
            logits = model.logits(model.write(states.to(device), mask.to(device), memory, memory_mask), vocab_ids)
            labels = torch.where(labels >= 0, to_vocab[labels.clamp(min=0)], labels).to(device)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        log.info("smallcap epoch %d/%d: loss %.4f (%.0f s, %.0f CPU s)", epoch + 1, epochs,
                 total / len(captions), time.perf_counter() - started, time.process_time() - cpu_started)

    meta = {"config": asdict(config), "image_dim": int(image_vectors.shape[1]), "fingerprint": fingerprint,
            "n_train": len(captions), "vocab": vocab, "bert": bert_config.to_dict(),
            "train_seconds": round(time.perf_counter() - started, 1),
            "train_cpu_seconds": round(time.process_time() - cpu_started, 1)}
    model.eval()
    with written_whole(model_dir) as folder:
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, folder / WEIGHTS_FILE)
        tokenizer.save_pretrained(folder)
        frequencies, n_docs = document_frequencies(ids[:-1] for ids in dict.fromkeys(map(tuple, targets)))
        (folder / CONSENSUS_FILE).write_text(json.dumps({"n_docs": n_docs, "frequencies": frequencies}))
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return model_dir


@torch.no_grad()
def _lower_states(model, inputs: list[list[int]], device: str, batch: int = 256) -> list[torch.Tensor]:
    """The frozen lower layers' states of each decoder input, [t_i, h] each, computed once (no dropout)."""
    model.eval()
    out = []
    for start in range(0, len(inputs), batch):
        ids, mask = pad(inputs[start : start + batch])
        states = model.read(ids.to(device), mask.to(device)).cpu()
        out += [s[: int(n)] for s, n in zip(states, mask.sum(1))]
    return out


def _stack(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[t_i, h] each -> right-padded [b, t, h] and mask [b, t]."""
    states = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    mask = torch.zeros(states.shape[:2], dtype=torch.long)
    for i, row in enumerate(rows):
        mask[i, : len(row)] = 1
    return states, mask
