"""Model folders on disk: where a model id resolves to, digests of the files that decide its outputs, and the one
logged way every model is loaded.

No torch here: job ids and tags are computed without loading a model.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

from ravlm_core.errors import UserError

# Everything that decides a model's outputs: architecture, weights, preprocessing, tokenisation, generation
# defaults and chat template. Patterns a folder lacks change nothing, so encoders and generators share the list.
TAGGED_FILES = ("config.json", "*.safetensors", "preprocessor_config.json", "processor_config.json", "tokenizer*.json",
                "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "tokenizer.model",
                "added_tokens.json", "generation_config.json", "chat_template.json", "chat_template.jinja")


@functools.lru_cache(maxsize=32)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex of a file; cached per (path, size, mtime) because weight files are hashed on every load."""
    stat = Path(path).stat()
    return _cached_digest(str(path), stat.st_size, stat.st_mtime_ns)


def resolve_folder(ref: str | Path) -> Path:
    """A local folder as is; otherwise the hub id's snapshot (cache only when HF_HUB_OFFLINE is set).

    Raises:
        UserError: `ref` is no local folder and neither the cache nor the hub can provide it.
    """
    if Path(ref).is_dir():
        return Path(ref)
    from huggingface_hub import constants, snapshot_download

    try:
        offline = constants.HF_HUB_OFFLINE
        return Path(snapshot_download(str(ref), local_files_only=offline, allow_patterns=list(TAGGED_FILES)))
    except (OSError, ValueError) as err:  # missing cache entry, no network, or not a valid repo id
        raise UserError(
            f"no local folder {ref} and the hub is unreachable: pass a local folder (a model saved with "
            f"save_pretrained)"
        ) from err


def folder_digest(folder: Path) -> str:
    """sha256 over the names and contents of every file that decides the model's outputs."""
    digest = hashlib.sha256()
    for pattern in TAGGED_FILES:
        for path in sorted(folder.glob(pattern)):
            digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def timed_load(what: str, load: Callable[[], T]) -> T:
    """Load a model and say so: every model load of a run is one "loaded ..." log line, which is how an idle
    nightly shows that it loaded none."""
    start = time.perf_counter()
    model = load()
    log.info("loaded %s in %.1fs", what, time.perf_counter() - start)
    return model


@contextmanager
def written_whole(model_dir: Path) -> Iterator[Path]:
    """A folder to save a trained model into, which appears at `model_dir` whole or not at all.

    It is written under a name of its own beside `model_dir` and renamed into place, so a crash never leaves a
    half-written model that looks finished. Two runs training the same model at once (a scheduled nightly and an
    operator's run) each write their own copy; the first rename wins and the other copy is dropped: the folder is
    named by everything the model was trained from, so either is the same model.
    """
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", dir=model_dir.parent))
    try:
        yield partial
        try:
            os.rename(partial, model_dir)
        except OSError:
            if not model_dir.is_dir():
                raise
            log.info("%s was saved meanwhile by another run: keeping that copy", model_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
