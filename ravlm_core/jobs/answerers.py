"""VQA answerers over retrieved context: neighbour voting, and a trained fusion answerer (saved as safetensors)."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ravlm_core.model_files import written_whole

log = logging.getLogger(__name__)


# How many brightness ranks `appearance` samples the pixels at (3 values each).
APPEARANCE_RANKS = 16


def appearance(signatures: list[bytes | None]) -> np.ndarray:
    """float32 [n, 3 * APPEARANCE_RANKS]: what colours each image holds, wherever they are: the pixels of its
    16x16 RGB signature (`imaging.signature`, stored in `contents`) ordered by brightness, their RGB (0..1) at
    evenly spaced ranks; zeros for an image without one.

    The caption-trained image vector keeps what captions name and folds shades together: on a second renderer's
    seed-1 set a linear probe reads the colour name off it for 0.74 of the test images (gray as black, teal as
    blue, brown as red), off this for 1.0, and 0.90 (against 0.72) when trained on easy-VQA's images instead."""
    out = np.zeros((len(signatures), 3 * APPEARANCE_RANKS), np.float32)
    rows = [row for row, sig in enumerate(signatures) if sig]
    if rows:
        pixels = np.stack([np.frombuffer(signatures[row], np.uint8) for row in rows]).reshape(len(rows), -1, 3)
        order = np.argsort(pixels.sum(2, dtype=np.int32), axis=1, kind="stable")  # [m, p] darkest first
        ranks = np.linspace(0, pixels.shape[1] - 1, APPEARANCE_RANKS).round().astype(int)
        picked = np.take_along_axis(pixels, order[:, ranks, None], 1)  # [m, ranks, 3]
        out[rows] = picked.reshape(len(rows), -1) / np.float32(255)
    return out


def vote_answers(context: np.ndarray, answers: list[str]) -> list[str]:
    """Neighbour voting: the answer with the largest weight in each item's retrieved answer histogram."""
    hist = context[:, : len(answers)]
    return [answers[i] if hist[row].sum() > 0 else "" for row, i in enumerate(hist.argmax(1))]


@dataclass(frozen=True)
class FusionConfig:
    """A handful of plain hyper-parameters; the defaults train in seconds on CPU."""

    hidden: int = 512
    # 30, not 12: the appearance inputs learn slower than the image vector (seed-1 colour 0.76 -> 0.79).
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    use_retrieval: bool = True
    # Read each image's `appearance` beside its vector (the colours its caption-trained vector folds together).
    appearance: bool = True
    # Shares of training rows whose image vector / retrieved context is zeroed. The vector alone can memorise
    # every KB image, so without this an answerer never learns to read the appearance (or to doubt its
    # neighbours) and fails on images unlike the KB's.
    # Chosen on a second renderer's seed-1 set (own KB): fusion 0.891 with neither, 0.901 with image dropout 0.9,
    # 0.909 with these two.
    image_dropout: float = 0.6
    context_dropout: float = 0.3


def _fusion_net(image_dim: int, question_dim: int, context_dim: int, n_answers: int, hidden: int,
                appearance_dim: int = 0):
    import torch
    from torch import nn

    class FusionNet(nn.Module):
        """answer logits = MLP((image + appearance) ⊙ question + context): the question selects what to read off
        the image (its vector and, when given, its `appearance`), the retrieved context (neighbours' answers)
        shifts the decision."""

        def __init__(self):
            super().__init__()
            self.image = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden), nn.GELU())
            # Standardised per feature by the training set's mean and spread (`standardise`), not per row: a
            # LayerNorm would take away each image's brightness, which is what tells gray from black; unscaled,
            # its small differences learn too slowly (0.53 against 0.92 colour accuracy after 12 epochs).
            self.register_buffer("looks_mean", torch.zeros(appearance_dim))
            self.register_buffer("looks_scale", torch.ones(appearance_dim))
            self.appearance = (nn.Sequential(nn.Linear(appearance_dim, hidden), nn.GELU())
                               if appearance_dim else None)
            self.question = nn.Sequential(nn.LayerNorm(question_dim), nn.Linear(question_dim, hidden), nn.GELU())
            self.context = nn.Linear(context_dim, hidden)
            self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, n_answers))

        def standardise(self, looks: torch.Tensor) -> None:
            """Fix the appearance inputs' per-feature mean and scale to those of the training rows `looks`."""
            if looks.numel():
                self.looks_mean.copy_(looks.mean(0))
                self.looks_scale.copy_(1 / looks.std(0, correction=0).clamp_min(1e-3))

        def forward(self, image: torch.Tensor, question: torch.Tensor, context: torch.Tensor,
                    appearance: torch.Tensor | None = None) -> torch.Tensor:
            # image [b, di], question [b, dq], context [b, dc], appearance [b, da] -> logits [b, n_answers]
            seen = self.image(image)
            if self.appearance is not None:
                seen = seen + self.appearance((appearance - self.looks_mean) * self.looks_scale)
            return self.head(seen * self.question(question) + self.context(context))

    return FusionNet()


class FusionAnswerer:
    """A trained fusion answerer: image vector + question vector + retrieved context -> answer."""

    def __init__(self, model_dir: Path, device: str = "cpu"):
        import torch
        from safetensors.torch import load_file

        self.model_dir = Path(model_dir)
        meta = json.loads((self.model_dir / "answerer.json").read_text())
        self.answers: list[str] = meta["answers"]
        self.config = FusionConfig(**meta["config"])
        self.device = device
        self.appearance_dim = meta.get("appearance_dim", 0)  # 0: trained before `appearance` existed
        self.net = _fusion_net(meta["image_dim"], meta["question_dim"], meta["context_dim"], len(self.answers),
                               self.config.hidden, self.appearance_dim)
        self.net.load_state_dict(load_file(self.model_dir / "weights.safetensors"))
        self.net.to(device).eval()
        self._torch = torch

    @property
    def name(self) -> str:
        return self.model_dir.name

    def predict(self, images: np.ndarray, questions: np.ndarray, context: np.ndarray,
                allowed: np.ndarray | None = None, looks: np.ndarray | None = None) -> list[str]:
        """Answers for float32 images [n, di], questions [n, dq], context [n, dc] (ignored without retrieval) and
        `looks` [n, da] (the images' `appearance`; read when the answerer was trained with it).

        `allowed` (bool [n, n_answers], optional) restricts each item to the answers its question can take: a
        question worded unlike any the answerer trained on otherwise drifts to the commonest answers ("yes" to
        "which colour is the figure?"). An item with nothing allowed keeps every answer."""
        torch = self._torch
        if not self.config.use_retrieval:
            context = np.zeros_like(context)
        if not self.appearance_dim:
            looks = np.zeros((len(images), 0), np.float32)
        elif looks is None:
            raise ValueError(f"the answerer {self.name} reads the images' appearance: pass `looks`")
        out: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(images), 4096):
                batch = [torch.from_numpy(np.ascontiguousarray(a[start : start + 4096])).to(self.device)
                         for a in (images, questions, context, looks)]
                logits = self.net(*batch)
                if allowed is not None:
                    mask = torch.from_numpy(allowed[start : start + 4096]).to(self.device)
                    mask[~mask.any(1)] = True
                    logits = logits.masked_fill(~mask, float("-inf"))
                out.extend(self.answers[i] for i in logits.argmax(1).tolist())
        return out


def _kept(n: int, dropout: float, generator, device: str):
    """float [n, 1]: 0 for a `dropout` share of rows, else 1."""
    import torch

    return (torch.rand(n, 1, generator=generator) >= dropout).float().to(device)


def fusion_dir(out_root: Path, fingerprint: str, config: FusionConfig) -> Path:
    """Where the answerer for this training data and config lives (whether trained yet or not)."""
    key = hashlib.blake2b(json.dumps([fingerprint, asdict(config)]).encode(), digest_size=6).hexdigest()
    return Path(out_root) / f"fusion-{'rag' if config.use_retrieval else 'norag'}-{key}"


def train_fusion(
    images: np.ndarray,
    questions: np.ndarray,
    context: np.ndarray,
    labels: np.ndarray,
    answers: list[str],
    out_root: Path,
    fingerprint: str,
    config: FusionConfig = FusionConfig(),
    device: str = "cpu",
    looks: np.ndarray | None = None,
) -> Path:
    """Train (or reuse) a fusion answerer; returns its folder `out_root/fusion-<hash>`.

    Args:
        images, questions, context: float32 [n, di], [n, dq], [n, dc] training inputs; context comes from
            leave-one-out retrieval so training sees what inference will see.
        labels: int [n], indices into `answers`.
        looks: float32 [n, da], the images' `appearance`, or None for an answerer that reads only the vectors.
        fingerprint: identifies the training data (KB content + encoder); with `config` it names the model,
            so the same data and settings reuse the saved model instead of training again.
    """
    import torch
    from safetensors.torch import save_file

    model_dir = fusion_dir(out_root, fingerprint, config)
    if (model_dir / "weights.safetensors").exists():
        return model_dir
    if not config.use_retrieval:
        context = np.zeros_like(context)
    if looks is None or not config.appearance:
        looks = np.zeros((len(images), 0), np.float32)

    torch.manual_seed(config.seed)
    net = _fusion_net(images.shape[1], questions.shape[1], context.shape[1], len(answers), config.hidden,
                      looks.shape[1]).to(device)
    data = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (images, questions, context, looks)]
    net.standardise(data[3])
    target = torch.from_numpy(labels.astype(np.int64)).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.lr, total_steps=config.epochs * -(-len(target) // config.batch_size))
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(config.epochs):
        order = torch.randperm(len(target), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            image, question, context, seen = (d[idx] for d in data)
            image = image * _kept(len(idx), config.image_dropout, generator, device)
            context = context * _kept(len(idx), config.context_dropout, generator, device)
            loss = torch.nn.functional.cross_entropy(net(image, question, context, seen), target[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        log.info("fusion answerer epoch %d/%d: loss %.4f", epoch + 1, config.epochs, total / len(target))

    meta = {"answers": answers, "config": asdict(config), "image_dim": images.shape[1],
            "question_dim": questions.shape[1], "context_dim": context.shape[1], "appearance_dim": looks.shape[1],
            "fingerprint": fingerprint,
            "n_train": int(len(target))}
    with written_whole(model_dir) as folder:
        save_file({k: v.contiguous().cpu() for k, v in net.state_dict().items()}, folder / "weights.safetensors")
        (folder / "answerer.json").write_text(json.dumps(meta, indent=2))
    return model_dir
