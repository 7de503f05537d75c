"""Alignment heads on frozen backbone features, trained with a multi-positive contrastive loss (an image has several
captions, and captions repeat across images) and kept at the epoch of best held-out recall."""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

# CLIP's initial temperature 0.07 and its cap on the logit scale (100), which keeps the softmax from saturating.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)


@dataclass(frozen=True)
class HeadConfig:
    """Plain hyper-parameters of the heads and their training (defaults live in `training.train_builtin_encoder`)."""

    dim: int  # shared embedding size
    epochs: int  # at most; validation may pick an earlier epoch's weights
    batch_size: int  # pairs per contrastive batch: more in-batch negatives per step
    lr: float  # AdamW
    weight_decay: float
    seed: int  # head initialisation, batch order and the augmented view drawn per epoch
    hidden: int = 0  # width of each head's hidden layer; 0: a linear head
    # The text head: "linear" (a Linear into `dim`) or "residual" (x + Linear(x), zero-initialised, so training
    # starts from the sentence encoder's own space and `dim` must be its width). See `training.fit_heads` for why.
    text_head: str = "linear"
    image_dropout: float = 0.0  # share of the image features zeroed per training row (none at inference)


@dataclass(frozen=True)
class HeadShape:
    """What candidate heads differ in (`training.HEAD_CANDIDATES`); the rest of `HeadConfig` they share."""

    hidden: int = 0
    text_head: str = "linear"
    image_dropout: float = 0.0

    def __str__(self) -> str:
        image = f"hidden {self.hidden}" if self.hidden else "linear"
        return f"image head {image}, {self.text_head} text head, image dropout {self.image_dropout}"


class AlignmentHeads(nn.Module):
    """One Linear→GELU→Linear head per tower into a shared `dim`-d space (one Linear where `hidden` is 0), or a
    residual text head (`ResidualLinear`, no hidden layer), plus the learnable log logit scale. `image_dropout`
    acts in training mode only, and only through `embed_images`: `image` itself is the inference head."""

    def __init__(self, image_dim: int, text_dim: int, hidden: int, dim: int, text_head: str = "linear",
                 image_dropout: float = 0.0):
        super().__init__()
        if text_head not in ("linear", "residual"):
            raise ValueError(f"text_head is 'linear' or 'residual', not {text_head!r}")
        if text_head == "residual" and dim != text_dim:
            raise ValueError(f"a residual text head keeps the text features' width {text_dim}; got dim {dim}")
        self.image = _head(image_dim, hidden, dim)
        self.text = nn.Sequential(ResidualLinear(text_dim)) if text_head == "residual" else _head(text_dim, hidden, dim)
        self.image_dropout = nn.Dropout(image_dropout)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        """[n, image_dim] → [n, dim] unit rows."""
        return F.normalize(self.image(self.image_dropout(features)), dim=-1)

    def embed_texts(self, features: torch.Tensor) -> torch.Tensor:
        """[n, text_dim] → [n, dim] unit rows."""
        return F.normalize(self.text(features), dim=-1)


class ResidualLinear(nn.Linear):
    """x + Linear(x), the Linear zero-initialised: an identity map to start from that training bends.

    Its state is a plain Linear's (`weight`, `bias`), so saved heads load by shape alone."""

    def __init__(self, width: int):
        super().__init__(width, width)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _head(features: int, hidden: int, dim: int) -> nn.Sequential:
    if hidden == 0:
        return nn.Sequential(nn.Linear(features, dim))
    return nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, dim))


def positive_mask(pair_images: torch.Tensor, pair_captions: torch.Tensor) -> torch.Tensor:
    """[B, B] bool: image of pair i matches caption of pair j when they are the same image or the same caption.

    Not a transitive closure: image A captioned "x", "y" and image B captioned "y", "z" make "z" no positive of A."""
    return (pair_images[:, None] == pair_images[None, :]) | (pair_captions[:, None] == pair_captions[None, :])


def multi_positive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, positives: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric contrastive loss where every matching (image, caption) in the batch counts as a positive.

    Plain CLIP InfoNCE takes pair i's own caption as image i's only match, so the image's other captions and other
    images' equal captions count as negatives. Here the target of row i is uniform over its positives
    (soft-target cross-entropy), in both directions.

    Args: unit-row embeddings [B, dim] each, a symmetric [B, B] bool mask with a true diagonal (`positive_mask`),
        scalar log logit scale. Returns: scalar loss.
    """
    logits = logit_scale.exp() * image_emb @ text_emb.T  # [B, B] image rows × text columns
    positives = positives.float()
    targets = positives / positives.sum(dim=1, keepdim=True)  # each row sums to 1
    # The mask is symmetric, so the same targets serve the text→image direction (logits.T).
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train_heads(
    image_views: torch.Tensor,
    text_features: torch.Tensor,
    pair_images: torch.Tensor,
    pair_captions: torch.Tensor,
    config: HeadConfig,
    device: str = "cpu",
    validate: Callable[[AlignmentHeads], float] | None = None,
    patience: int | None = None,
) -> tuple[AlignmentHeads, list[float], int]:
    """Train fresh heads on precomputed frozen features; deterministic for `config.seed`.

    Every epoch visits every (image, caption) pair once, each image seen through one of its views drawn afresh
    per epoch (view 0 is the plain image, the rest augmented copies).

    Args:
        image_views: [N, V, image_dim] backbone features of the N training images, V views each.
        text_features: [C, text_dim] backbone features of the C distinct captions.
        pair_images, pair_captions: [P] the image and caption index of every training pair.
        config: hyper-parameters.
        device: where the heads train.
        validate: scores the heads (eval mode) after every epoch, higher is better; the best epoch's weights are
            returned (of equal scores, the later). Without it the last epoch's are.
        patience: stop after this many epochs without a better score (None: run every epoch).

    Returns:
        The trained heads (eval mode, on CPU), the mean loss of every epoch run, and the epoch kept (1-based; 0
        when `config.epochs` is 0).

    Raises:
        ValueError: no pairs, or the pairs point past the features.
    """
    n_pairs = len(pair_images)
    if n_pairs == 0 or len(pair_captions) != n_pairs:
        raise ValueError(f"need the same non-zero number of pair images and captions; got {n_pairs}, "
                         f"{len(pair_captions)}")
    if int(pair_images.max()) >= len(image_views) or int(pair_captions.max()) >= len(text_features):
        raise ValueError("a training pair points past the image or text features")
    # The heads' initialisation and dropout masks draw from torch's global RNG: seed a fork of it, so training is
    # deterministic for a seed and leaves the caller's random state alone.
    forked = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(config.seed)
        return _train(image_views, text_features, pair_images, pair_captions, config, device, validate, patience)


def _train(image_views, text_features, pair_images, pair_captions, config: HeadConfig, device: str, validate,
           patience):
    n_pairs = len(pair_images)
    heads = AlignmentHeads(image_views.shape[2], text_features.shape[1], config.hidden, config.dim,
                           config.text_head, config.image_dropout).to(device)
    image_views, text_features = image_views.to(device), text_features.to(device)
    pair_images, pair_captions = pair_images.to(device), pair_captions.to(device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    shuffle = torch.Generator().manual_seed(config.seed)
    n_images, n_views = image_views.shape[:2]

    epoch_losses, best_score, best_state, best_epoch = [], -math.inf, None, 0
    for epoch in range(1, config.epochs + 1):
        heads.train()
        order = torch.randperm(n_pairs, generator=shuffle).to(device)
        view = torch.randint(n_views, (n_images,), generator=shuffle).to(device)
        images = image_views[torch.arange(n_images, device=device), view]  # [N, image_dim]: this epoch's views
        total = 0.0
        for start in range(0, n_pairs, config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = multi_positive_loss(
                heads.embed_images(images[pair_images[batch]]), heads.embed_texts(text_features[pair_captions[batch]]),
                positive_mask(pair_images[batch], pair_captions[batch]), heads.logit_scale,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                heads.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            total += loss.item() * len(batch)
        epoch_losses.append(total / n_pairs)
        if validate is None:
            log.info("alignment epoch %d/%d: loss %.4f", epoch, config.epochs, epoch_losses[-1])
            best_epoch = epoch
            continue
        heads.eval()
        with torch.no_grad():
            score = float(validate(heads))
        log.info("alignment epoch %d/%d: loss %.4f, held-out score %.4f", epoch, config.epochs, epoch_losses[-1], score)
        if score >= best_score:  # a tie keeps the later epoch: a saturated recall (1.0) must not stop training
            best_score, best_state, best_epoch = score, copy.deepcopy(heads.state_dict()), epoch
        elif patience is not None and epoch - best_epoch >= patience:
            break
    if best_state is not None:
        heads.load_state_dict(best_state)
    return heads.cpu().eval(), epoch_losses, best_epoch

