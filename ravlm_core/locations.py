"""Where shards and trained models live: local folders, or object storage beside the store (any pyarrow URI).

A local `data_dir` keeps everything as plain paths (`pathlib.Path`). A `data_dir` URI such as
`s3://bucket/ravlm` puts the store, the Parquet shards, the staging plans and the trained models under it, so a
second machine with the same settings works from them. Shards are read and written through pyarrow's file
systems (`pq.read_table("s3://...")` resolves the URI itself). Model loaders (transformers, onnxruntime,
safetensors) want local files, so a model folder is downloaded once into a local cache and uploaded after
training; its `.complete` marker is written last, so a reader never takes half a model for a whole one.

Credentials and endpoints come from the usual environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...), which
pyarrow and LanceDB both read.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ravlm_core.config import Settings
from ravlm_core.uris import is_remote, join  # noqa: F401 - part of this module's interface

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

# pyarrow is imported where used: the CLI must start fast.
log = logging.getLogger(__name__)

# Written last into a model folder on object storage (and into its local copy): the folder is whole.
COMPLETE = ".complete"


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def exists(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    if not is_remote(location):
        return Path(location).exists()
    fs, path = _filesystem(str(location))
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def remove(location: str | Path) -> None:
    if not is_remote(location):
        Path(location).unlink(missing_ok=True)
        return
    fs, path = _filesystem(str(location))
    fs.delete_file(path)


def read_text(location: str | Path) -> str | None:
    """A small file's text, or None when there is none."""
    import pyarrow.fs as pafs

    if not is_remote(location):
        return Path(location).read_text() if Path(location).is_file() else None
    fs, path = _filesystem(str(location))
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(location: str | Path, text: str) -> None:
    """Write a small file whole: one PUT on object storage (never seen half-written), a rename locally."""
    if not is_remote(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(text)
        os.replace(partial, path)
        return
    fs, path = _filesystem(str(location))
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def write_parquet_atomically(location: str | Path, schema: pa.Schema, tables) -> None:
    """Write `tables` as row groups of one Parquet file that appears under `location` only once complete.

    Locally the file is written under a hidden name and renamed; on object storage an upload becomes visible
    only when it completes, so the object is written in place."""
    import pyarrow.parquet as pq

    if is_remote(location):
        fs, path = _filesystem(str(location))
        with pq.ParquetWriter(path, schema, filesystem=fs) as writer:
            for table in tables:
                if table.num_rows:
                    writer.write_table(table)
        return
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not "*.parquet": a half-written file must never be listed as a shard.
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for table in tables:
                if table.num_rows:
                    writer.write_table(table)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def list_files(folder: str | Path, suffix: str) -> list[str]:
    """Sorted locations of the files directly in `folder` whose name ends with `suffix` (none if no folder)."""
    import pyarrow.fs as pafs

    if not is_remote(folder):
        folder = Path(folder)
        return sorted(str(path) for path in folder.glob(f"*{suffix}")) if folder.is_dir() else []
    fs, path = _filesystem(str(folder))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    scheme = str(folder).split("://", 1)[0]
    return sorted(f"{scheme}://{info.path}" for info in infos
                  if info.type == pafs.FileType.File and info.base_name.endswith(suffix)
                  and not info.base_name.startswith("."))


# --- trained models --------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """Where model folders from object storage are kept on this machine: Settings' `model_cache` (RAVLM_CACHE_DIR,
    else the XDG cache). Read here, on the machine that loads or trains the model, rather than passed from the
    flow: every machine has its own cache."""
    return Settings().model_cache


def local_models(models: str | Path) -> Path:
    """The local folder that model loaders and trainers use for the models location `models`: the folder
    itself when it is local, this machine's cache of it when it is on object storage."""
    if not is_remote(models):
        return Path(models)
    # The cache mirrors the URI (<cache>/s3/bucket/ravlm/models/...), so a model's URI and the models
    # location it lies under name the same local folder.
    scheme, rest = str(models).rstrip("/").split("://", 1)
    return cache_root() / scheme / rest


def pulled(models: str | Path, sub: str) -> Path:
    """`local_models(models)/sub`, with every complete model folder under `sub` on object storage downloaded
    first (those already cached are kept). `sub` may name one model folder or a folder of them."""
    import pyarrow.fs as pafs

    local = local_models(models) / sub
    if not is_remote(models):
        return local
    fs, root = _filesystem(str(models).rstrip("/"))
    infos = fs.get_file_info(pafs.FileSelector(f"{root}/{sub}".rstrip("/"), recursive=True, allow_not_found=True))
    for marker in sorted(info.path for info in infos if info.base_name == COMPLETE):
        relative = marker[len(root) + 1 : -len(COMPLETE) - 1]
        target = local_models(models) / relative
        if not (target / COMPLETE).is_file():
            _download(fs, f"{root}/{relative}", target)
    return local


def _download(fs: pafs.FileSystem, prefix: str, target: Path) -> None:
    """Copy one model folder into the cache under a temporary name, then rename it into place."""
    import pyarrow.fs as pafs

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        pafs.copy_files(prefix, str(partial), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        (partial / COMPLETE).touch()
        if (target / COMPLETE).is_file():  # another process on this machine downloaded it meanwhile
            return
        shutil.rmtree(target, ignore_errors=True)  # a copy left without its marker by a killed download
        try:
            os.rename(partial, target)
        except OSError:  # another process on this machine finished the same download first
            if not (target / COMPLETE).is_file():
                raise
        log.info("downloaded model %s to %s", prefix, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def publish(models: str | Path, folder: str | Path) -> None:
    """Upload a model folder trained in `local_models(models)` to object storage, its marker last; nothing to
    do for a local models folder, or when the folder is there already (trained models are named by content)."""
    import pyarrow.fs as pafs

    if not is_remote(models):
        return
    folder = Path(folder)
    relative = folder.relative_to(local_models(models)).as_posix()
    fs, root = _filesystem(str(models).rstrip("/"))
    prefix = f"{root}/{relative}"
    if fs.get_file_info(f"{prefix}/{COMPLETE}").type == pafs.FileType.File:
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != COMPLETE:
            pafs.copy_files(str(path), f"{prefix}/{path.relative_to(folder).as_posix()}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    with fs.open_output_stream(f"{prefix}/{COMPLETE}") as stream:
        stream.write(b"")
    (folder / COMPLETE).touch()
    log.info("uploaded model %s to %s", folder.name, f"{str(models).rstrip('/')}/{relative}")


def shared_ref(models: str | Path, folder: str | Path) -> str:
    """How a trained model folder is named between tasks and in job ids: its path for a local models folder,
    its URI when the models are on object storage (every machine fetches it into its own cache)."""
    if not is_remote(models):
        return str(folder)
    return str(join(models, Path(folder).relative_to(local_models(models)).as_posix()))


def local_model(ref: str) -> str:
    """A local folder to load `ref` from: a model URI (`shared_ref`) is downloaded into this machine's cache
    first; a local folder or a hub id is returned as is."""
    if not is_remote(ref):
        return ref
    models, name = ref.rstrip("/").rsplit("/", 1)
    return str(pulled(models, name))
