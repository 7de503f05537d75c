"""SmallCap-style captioning (Ramos et al. 2023): a small decoder trained here, prompted with retrieved captions.

The decoder reads the image as a few prefix embeddings (a linear map of its image vector) and then a text prompt,
"similar images show <the neighbours' captions>. this image shows", and writes the caption. It is a GPT-2
architecture from a config (nanoGPT-sized, trained from scratch on the KB's captions with a word-level
vocabulary of them), so decoding, padding and beam search are transformers' own. Training retrieves for each KB
image as inference will (never its own bytes or a near-duplicate) and drops the retrieved captions from a share
of the examples, so the same decoder also runs without retrieval: the comparison the reports make; and hides
the target's own caption among the neighbours' from another share, so it learns to read the image and not only
to copy the nearest caption.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ravlm_core.errors import UserError
from ravlm_core.generators import Generation, GeneratorSpec, Request, generator_tag, torch_dtype
from ravlm_core.generators.prompts import context_block, load_template, render
from ravlm_core.model_files import written_whole

log = logging.getLogger(__name__)

SPECIAL = {"pad": "<pad>", "unk": "<unk>", "eos": "<eos>"}
META_FILE = "smallcap.json"
PROJECTION_FILE = "projection.safetensors"
_WORDS = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class SmallCapConfig:
    """A handful of plain values; the defaults train in one to two minutes on easy-VQA's 4,000 captions on a CPU."""

    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 4
    prefix_tokens: int = 4  # image vector -> this many input embeddings
    max_positions: int = 160
    epochs: int = 4
    min_steps: int = 300  # small KBs train for more epochs, so they still see this many optimiser steps
    batch_size: int = 32
    lr: float = 1e-3
    context_dropout: float = 0.25  # share of training examples that see no retrieved captions
    # Share of the others whose neighbours lose every caption equal to the target: the KB rarely lacks an
    # image's exact caption in leave-one-out training, but a new collection often does, and a decoder that
    # only learnt to copy the nearest caption cannot name a colour-shape pair no neighbour shows.
    novelty_dropout: float = 0.3
    context_items: int = 5  # retrieved captions per training prompt (the spec's default at inference)
    seed: int = 0


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def build_tokenizer(texts: list[str]):
    """A word-level tokenizer over the words of `texts` (lowercased; punctuation split off)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL.values())}
    for text in texts:
        for word in words(text):
            vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL["unk"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=SPECIAL["unk"], pad_token=SPECIAL["pad"],
                                   eos_token=SPECIAL["eos"])


def detokenize(tokens: str) -> str:
    """Word-level decoding joins with spaces: put punctuation back against its word."""
    return re.sub(r" ([.,;:!?')])", r"\1", tokens).strip()


class SmallCap(torch.nn.Module):
    """GPT-2 from a config plus the image projection: image vector [b, d] -> prefix embeddings [b, p, n_embd]."""

    def __init__(self, decoder, image_dim: int, prefix_tokens: int):
        super().__init__()
        self.decoder = decoder
        self.prefix_tokens = prefix_tokens
        self.projection = torch.nn.Linear(image_dim, prefix_tokens * decoder.config.n_embd)

    def embed(self, image_vectors: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """[b, d], [b, t] -> [b, p + t, n_embd]: the image prefix, then the tokens."""
        prefix = self.projection(image_vectors).view(len(image_vectors), self.prefix_tokens, -1)
        return torch.cat([prefix, self.decoder.get_input_embeddings()(token_ids)], dim=1)


def smallcap_dir(out_root: Path, fingerprint: str, config: SmallCapConfig) -> Path:
    """Where the decoder for this training data and config lives (whether trained yet or not)."""
    key = hashlib.blake2b(json.dumps([fingerprint, asdict(config)]).encode(), digest_size=6).hexdigest()
    return Path(out_root) / f"smallcap-{key}"


def train_smallcap(image_vectors: np.ndarray, neighbour_captions: list[list[str]], captions: list[str],
                   out_root: Path, fingerprint: str, config: SmallCapConfig = SmallCapConfig(),
                   device: str = "cpu") -> Path:
    """Train (or reuse) a SmallCap decoder; returns its folder `out_root/smallcap-<hash>`.

    Args:
        image_vectors: float32 [n, d], the training images' vectors.
        neighbour_captions: per example, its retrieved neighbours' distinct captions, best first (leave-one-out
            retrieval); the prompt shows the first `config.context_items` of them.
        captions: per example, the caption to learn.
        fingerprint: identifies the training data (KB content, encoder, k); with `config` it names the model.
    """
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir = smallcap_dir(out_root, fingerprint, config)
    if (model_dir / META_FILE).exists():
        return model_dir
    template = load_template("smallcap", "default", "caption")
    tokenizer = build_tokenizer(captions + [render(template, context_block("smallcap", [{"caption": "x"}],
                                                                              "caption"))])
    rng = np.random.default_rng(config.seed)

    def prompt(i: int) -> str:
        if rng.random() < config.context_dropout:
            return render(template, "")
        shown = neighbour_captions[i]
        if rng.random() < config.novelty_dropout:
            shown = [c for c in shown if c != captions[i]]
        block = context_block("smallcap", [{"caption": c} for c in shown[: config.context_items]], "caption")
        return render(template, block)

    torch.manual_seed(config.seed)
    decoder = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=config.max_positions, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    model = SmallCap(decoder, image_vectors.shape[1], config.prefix_tokens).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    steps_per_epoch = -(-len(captions) // config.batch_size)
    epochs = max(config.epochs, -(-config.min_steps // steps_per_epoch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    vectors = torch.from_numpy(np.ascontiguousarray(image_vectors, dtype=np.float32))
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(captions), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size].tolist()
            prompts = [prompt(i) for i in idx]
            ids, mask, labels = _training_batch(tokenizer, prompts, [captions[i] for i in idx],
                                                config.max_positions - config.prefix_tokens)
            embeds = model.embed(vectors[idx].to(device), ids.to(device))
            prefix_mask = torch.ones(len(idx), config.prefix_tokens, dtype=mask.dtype)
            ignore = torch.full((len(idx), config.prefix_tokens), -100)
            loss = model.decoder(inputs_embeds=embeds, attention_mask=torch.cat([prefix_mask, mask], 1).to(device),
                                 labels=torch.cat([ignore, labels], 1).to(device)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        log.info("smallcap epoch %d/%d: loss %.4f", epoch + 1, epochs, total / len(captions))

    meta = {"config": asdict(config), "image_dim": int(image_vectors.shape[1]), "fingerprint": fingerprint,
            "n_train": len(captions)}
    with written_whole(model_dir) as folder:
        model.decoder.save_pretrained(folder)  # config.json + model.safetensors
        tokenizer.save_pretrained(folder)
        save_file({k: v.contiguous().cpu() for k, v in model.projection.state_dict().items()}, folder / PROJECTION_FILE)
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return model_dir


def _training_batch(tokenizer, prompts: list[str], captions: list[str], max_tokens: int):
    """Right-padded ids, mask and labels (-100 outside the caption) for prompt + caption + <eos>."""
    rows, targets = [], []
    for prompt, caption in zip(prompts, captions):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(caption, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p + c)[-max_tokens:])  # too long: keep the caption, cut the prompt's start
        targets.append(len(c))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, (row, n_target) in enumerate(zip(rows, targets)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, len(row) - n_target : len(row)] = torch.tensor(row[len(row) - n_target :])
    return ids, mask, labels


class SmallCapGenerator:
    """A trained SmallCap decoder; reads image vectors, not pixels (`needs_pixels` is False)."""

    needs_pixels = False

    def __init__(self, spec: GeneratorSpec, device: str = "cpu"):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, GPT2LMHeadModel

        folder = Path(spec.model)
        if not (folder / META_FILE).is_file():
            raise UserError(f"{folder} is not a SmallCap decoder (no {META_FILE}): leave the model out "
                            f"(--generator smallcap) and the caption job trains one on the knowledge base")
        meta = json.loads((folder / META_FILE).read_text())
        config = SmallCapConfig(**meta["config"])
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        decoder = GPT2LMHeadModel.from_pretrained(folder, use_safetensors=True)
        self.model = SmallCap(decoder, meta["image_dim"], config.prefix_tokens)
        self.model.projection.load_state_dict(load_file(folder / PROJECTION_FILE))
        self.dtype = torch_dtype(spec, device)
        self.model.eval().requires_grad_(False).to(device=device, dtype=self.dtype)
        self.spec, self.device, self.config = spec, device, config
        self.template = load_template("smallcap", spec.prompt, "caption")
        self.tag = generator_tag(spec, folder)

    def generate(self, requests: list[Request], task: str) -> list[Generation]:
        if task != "caption":
            raise UserError("smallcap writes captions; for VQA choose builtin-fusion, blip or vlm")
        prompts = [render(self.template, context_block("smallcap", r.context, task)) for r in requests]
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        vectors = torch.from_numpy(np.stack([r.vector for r in requests]).astype(np.float32))
        embeds, mask = self._left_padded(vectors, ids)
        with torch.inference_mode():
            # A small decoder that loses its place can loop ("a drawing of a drawing of ..."): no trigram twice
            # in what it writes (transformers warns that the prompt is not counted: that is the intent).
            warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")
            output = self.model.decoder.generate(
                inputs_embeds=embeds, attention_mask=mask, max_new_tokens=self.spec.max_new_tokens,
                num_beams=self.spec.num_beams, do_sample=False, eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id, no_repeat_ngram_size=3)
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return [Generation(detokenize(t), p) for t, p in zip(texts, prompts)]

    def _left_padded(self, vectors: torch.Tensor, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs [b, w, e] and mask [b, w]: pads, then the image prefix, then the prompt, so every row ends where
        generation starts (decoder-only batching); positions follow the mask inside generate()."""
        width = self.config.prefix_tokens + max(len(row) for row in ids)
        embeds = torch.zeros(len(ids), width, self.model.decoder.config.n_embd, dtype=self.dtype, device=self.device)
        mask = torch.zeros(len(ids), width, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            for i, row in enumerate(ids):
                row_embeds = self.model.embed(vectors[i : i + 1].to(self.device, self.dtype),
                                              torch.tensor([row], device=self.device, dtype=torch.long))[0]
                embeds[i, width - len(row_embeds):] = row_embeds
                mask[i, width - len(row_embeds):] = 1
        return embeds, mask
