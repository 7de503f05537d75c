"""Alignment heads on frozen backbone features, trained with a multi-positive contrastive loss (captions repeat)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

# CLIP's initial temperature 0.07 and its cap on the logit scale (100), which keeps the softmax from saturating.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)


@dataclass(frozen=True)
class HeadConfig:
    """Plain hyper-parameters of the heads and their training (defaults live in `train_builtin_encoder`)."""

    dim: int  # shared embedding size
    hidden: int  # width of each head's hidden layer
    epochs: int
    batch_size: int  # pairs per contrastive batch: more in-batch negatives per step
    lr: float  # AdamW
    weight_decay: float
    seed: int  # head initialisation and batch order


class AlignmentHeads(nn.Module):
    """One Linear→GELU→Linear head per tower into a shared `dim`-d space, plus the learnable log logit scale."""

    def __init__(self, image_dim: int, text_dim: int, hidden: int, dim: int):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(image_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.text = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        """[n, image_dim] → [n, dim] unit rows."""
        return F.normalize(self.image(features), dim=-1)

    def embed_texts(self, features: torch.Tensor) -> torch.Tensor:
        """[n, text_dim] → [n, dim] unit rows."""
        return F.normalize(self.text(features), dim=-1)


def multi_positive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric contrastive loss where every pair in the batch with the same caption counts as a positive.

    Plain CLIP InfoNCE takes pair i's own caption as image i's only match, so other pairs with the same caption
    count as negatives. Here the target of row i is uniform over all j with labels[j] == labels[i] (soft-target
    cross-entropy), in both directions. Where equal captions get bit-identical text vectors (a frozen text tower
    without dropout) both losses agree in value and gradient; they part as soon as the positives' vectors differ.

    Args: unit-row embeddings [B, dim] each, caption ids [B], scalar log logit scale. Returns: scalar loss.
    """
    logits = logit_scale.exp() * image_emb @ text_emb.T  # [B, B] image rows × text columns
    positives = (labels[:, None] == labels[None, :]).float()  # [B, B], symmetric, diagonal all ones
    targets = positives / positives.sum(dim=1, keepdim=True)  # each row sums to 1
    # The mask is symmetric, so the same targets serve the text→image direction (logits.T).
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train_heads(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    config: HeadConfig,
    device: str = "cpu",
) -> tuple[AlignmentHeads, list[float]]:
    """Train fresh heads on precomputed frozen features; deterministic for `config.seed`.

    Args:
        image_features: [N, image_dim] backbone features of the N training images.
        text_features: [N, text_dim] backbone features of their captions.
        labels: [N] caption ids; equal ids mean equal captions (the positives).
        config: hyper-parameters.
        device: where the heads train.

    Returns:
        The trained heads (eval mode, on CPU) and the mean loss of every epoch.

    Raises:
        ValueError: the three inputs disagree on N, or N is 0.
    """
    n = len(labels)
    if n == 0 or len(image_features) != n or len(text_features) != n:
        raise ValueError(f"need the same non-zero number of image features, text features and labels; got "
                         f"{len(image_features)}, {len(text_features)}, {n}")
    # Seed only a forked RNG: initialising the heads must not disturb the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        heads = AlignmentHeads(image_features.shape[1], text_features.shape[1], config.hidden, config.dim)
    heads.to(device).train()
    image_features, text_features, labels = image_features.to(device), text_features.to(device), labels.to(device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    shuffle = torch.Generator().manual_seed(config.seed)

    epoch_losses = []
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=shuffle).to(device)
        total = 0.0
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = multi_positive_loss(
                heads.embed_images(image_features[batch]), heads.embed_texts(text_features[batch]),
                labels[batch], heads.logit_scale,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                heads.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            total += loss.item() * len(batch)
        epoch_losses.append(total / n)
        log.info("alignment epoch %d/%d: loss %.4f, temperature %.4f", epoch + 1, config.epochs, epoch_losses[-1],
                 1 / heads.logit_scale.exp().item())
    return heads.cpu().eval(), epoch_losses
