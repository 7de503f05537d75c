"""Model folders on disk: where a model id resolves to, and digests of the files that decide its outputs.

No torch here: job ids and tags are computed without loading a model.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

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
