"""What every encoder shares at run time: the inference context (bf16 on CUDA), unit-row output, host → device
copies and the measured batch size."""
from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

T = TypeVar("T")
log = logging.getLogger(__name__)

# Images per forward pass a CPU probe chooses among. Smaller batches keep a convnet's activations in cache: on the
# 2-core EPYC here batch 8-16 ran the built-in encoder faster than 64 (benchmarks/embed_bench.py prints the probe).
CPU_BATCH_CANDIDATES = (8, 16, 32, 64)
# On a GPU a bigger batch only fills it better; 256 ViT-B/32 or EfficientNet-Lite0 inputs fit any current card.
GPU_BATCH_SIZE = 256


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


def to_device(batch: np.ndarray, device: str, staging: dict) -> torch.Tensor:
    """A host batch as a tensor on `device`; on CUDA through a reused pinned buffer and a non-blocking copy.

    `staging` holds the pinned buffer between calls. Reuse is safe because every encoder reads its results back
    to the host (a synchronising copy) before the next batch is staged."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch))
    if torch.device(device).type != "cuda":
        return tensor
    pinned = staging.get("pinned")
    if pinned is None or pinned.dtype != tensor.dtype or pinned.numel() < tensor.numel():
        pinned = staging["pinned"] = torch.empty(tensor.numel(), dtype=tensor.dtype).pin_memory()
    host = pinned[: tensor.numel()].view(tensor.shape)
    host.copy_(tensor)
    return host.to(device, non_blocking=True)


def measured_batch_size(run: Callable[[int], object], cache: Path | None, candidates=CPU_BATCH_CANDIDATES) -> int:
    """The candidate batch size whose forward passes take the least time per image on this machine.

    A timed probe (warm-up, then the best of two passes of at least 32 images per candidate, a second or two in
    all), kept in `cache` (JSON, keyed by machine and thread count) so later loads reuse the choice."""
    key = f"{platform.node()}|{platform.machine()}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads"
    known = _read_json(cache) if cache else {}
    if isinstance(known.get(key), int):
        return known[key]
    seconds_per_image = {}
    for size in candidates:
        run(size)  # warm-up: first-call allocations and kernel selection are not throughput
        reps = max(1, 32 // size)
        best = float("inf")
        for _ in range(2):
            tick = time.perf_counter()
            for _ in range(reps):
                run(size)
            best = min(best, (time.perf_counter() - tick) / (reps * size))
        seconds_per_image[size] = best
    chosen = min(seconds_per_image, key=seconds_per_image.get)
    log.info("batch size %d chosen by measurement (%s images/s)", chosen,
             ", ".join(f"{size}: {1 / s:.0f}" for size, s in seconds_per_image.items()))
    if cache:
        staging = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        staging.write_text(json.dumps({**known, key: chosen}, indent=2))
        staging.replace(cache)
    return chosen


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


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


def export_onnx(module: torch.nn.Module, example: tuple, model_dir: Path, onnx_file: str, meta_file: str,
                meta: dict, *, input_names: list[str], dynamic_axes: dict, what: str) -> Path | None:
    """Export `module` to `model_dir/onnx_file` (staged under a temporary name, then renamed) and write `meta`
    beside it; None, with a warning naming `what` falls back to, when the export cannot be done here: an optional
    speed-up must never fail the pipeline."""
    import warnings

    from ravlm_core.errors import first_line

    model_dir = Path(model_dir)
    staging = model_dir / f".{onnx_file}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shapes the graph keeps dynamic anyway
            torch.onnx.export(module.eval(), example, str(staging), dynamo=False, input_names=input_names,
                              output_names=["vectors"], dynamic_axes=dynamic_axes, opset_version=17)
    except Exception as error:  # noqa: BLE001
        log.warning("could not export %s (%s: %s); %s", onnx_file, type(error).__name__, first_line(error), what)
        staging.unlink(missing_ok=True)
        return None
    staging.replace(model_dir / onnx_file)
    (model_dir / meta_file).write_text(json.dumps(meta))
    log.info("exported %s for %s", onnx_file, meta.get("tag"))
    return model_dir / onnx_file
