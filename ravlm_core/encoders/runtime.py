"""What every encoder shares at run time: the inference context (bf16 on CUDA), unit-row output, file digests."""
from __future__ import annotations

import functools
import hashlib
from contextlib import contextmanager
from pathlib import Path
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


@functools.lru_cache(maxsize=32)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex of a file; cached per (path, size, mtime) because weight files are hashed on every load."""
    stat = Path(path).stat()
    return _cached_digest(str(path), stat.st_size, stat.st_mtime_ns)


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
