"""What every encoder shares at run time: the inference context (bf16 on CUDA) and unit-row output."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch

T = TypeVar("T")


@contextmanager
def inference(device: str) -> Iterator[None]:
    """No autograd; bf16 autocast on CUDA only (CPU bf16 is slower than fp32 on most CPUs, so it stays fp32)."""
    device_type = torch.device(device).type
    with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        yield


def unit_rows(embeddings: torch.Tensor) -> np.ndarray:
    """[n, dim] tensor of any dtype/device → float32 numpy rows of L2 norm 1."""
    embeddings = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    return embeddings.cpu().numpy().astype(np.float32, copy=False)


def empty_rows(dim: int) -> np.ndarray:
    """The answer for an empty batch, so callers never special-case it."""
    return np.zeros((0, dim), dtype=np.float32)


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter); works on one-pass iterables."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
