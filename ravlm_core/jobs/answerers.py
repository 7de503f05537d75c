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


def vote_answers(context: np.ndarray, answers: list[str]) -> list[str]:
    """Neighbour voting: the answer with the largest weight in each item's retrieved answer histogram."""
    hist = context[:, : len(answers)]
    return [answers[i] if hist[row].sum() > 0 else "" for row, i in enumerate(hist.argmax(1))]


@dataclass(frozen=True)
class FusionConfig:
    """A handful of plain hyper-parameters; the defaults train in seconds on CPU."""

    hidden: int = 512
    epochs: int = 12
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    use_retrieval: bool = True


def _fusion_net(image_dim: int, question_dim: int, context_dim: int, n_answers: int, hidden: int):
    import torch
    from torch import nn

    class FusionNet(nn.Module):
        """answer logits = MLP(image ⊙ question + context): the question selects what to read off the image,
        the retrieved context (neighbours' answers) shifts the decision."""

        def __init__(self):
            super().__init__()
            self.image = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden), nn.GELU())
            self.question = nn.Sequential(nn.LayerNorm(question_dim), nn.Linear(question_dim, hidden), nn.GELU())
            self.context = nn.Linear(context_dim, hidden)
            self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, n_answers))

        def forward(self, image: torch.Tensor, question: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            # image [b, di], question [b, dq], context [b, dc] -> logits [b, n_answers]
            return self.head(self.image(image) * self.question(question) + self.context(context))

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
        self.net = _fusion_net(meta["image_dim"], meta["question_dim"], meta["context_dim"], len(self.answers),
                               self.config.hidden)
        self.net.load_state_dict(load_file(self.model_dir / "weights.safetensors"))
        self.net.to(device).eval()
        self._torch = torch

    @property
    def name(self) -> str:
        return self.model_dir.name

    def predict(self, images: np.ndarray, questions: np.ndarray, context: np.ndarray,
                allowed: np.ndarray | None = None) -> list[str]:
        """Answers for float32 images [n, di], questions [n, dq], context [n, dc] (ignored without retrieval).

        `allowed` (bool [n, n_answers], optional) restricts each item to the answers its question can take: a
        question worded unlike any the answerer trained on otherwise drifts to the commonest answers ("yes" to
        "which colour is the figure?"). An item with nothing allowed keeps every answer."""
        torch = self._torch
        if not self.config.use_retrieval:
            context = np.zeros_like(context)
        out: list[str] = []
        with torch.inference_mode():
            for start in range(0, len(images), 4096):
                batch = [torch.from_numpy(np.ascontiguousarray(a[start : start + 4096])).to(self.device)
                         for a in (images, questions, context)]
                logits = self.net(*batch)
                if allowed is not None:
                    mask = torch.from_numpy(allowed[start : start + 4096]).to(self.device)
                    mask[~mask.any(1)] = True
                    logits = logits.masked_fill(~mask, float("-inf"))
                out.extend(self.answers[i] for i in logits.argmax(1).tolist())
        return out


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
) -> Path:
    """Train (or reuse) a fusion answerer; returns its folder `out_root/fusion-<hash>`.

    Args:
        images, questions, context: float32 [n, di], [n, dq], [n, dc] training inputs; context comes from
            leave-one-out retrieval so training sees what inference will see.
        labels: int [n], indices into `answers`.
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

    torch.manual_seed(config.seed)
    net = _fusion_net(images.shape[1], questions.shape[1], context.shape[1], len(answers), config.hidden).to(device)
    data = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (images, questions, context)]
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
            loss = torch.nn.functional.cross_entropy(net(*(d[idx] for d in data)), target[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        log.info("fusion answerer epoch %d/%d: loss %.4f", epoch + 1, config.epochs, total / len(target))

    meta = {"answers": answers, "config": asdict(config), "image_dim": images.shape[1],
            "question_dim": questions.shape[1], "context_dim": context.shape[1], "fingerprint": fingerprint,
            "n_train": int(len(target))}
    with written_whole(model_dir) as folder:
        save_file({k: v.contiguous().cpu() for k, v in net.state_dict().items()}, folder / "weights.safetensors")
        (folder / "answerer.json").write_text(json.dumps(meta, indent=2))
    return model_dir
