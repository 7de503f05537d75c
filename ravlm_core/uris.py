"""A location is a local folder or a URI on object storage: which one it is, and the location of a path under it."""
from __future__ import annotations

from pathlib import Path


def is_remote(location: str | Path) -> bool:
    """True for a URI with a scheme other than file:// (s3://, gs://, abfs://, ...)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join(base: str | Path, *parts: str) -> str | Path:
    """`base/parts...`: a Path for a local folder, a URI string on object storage."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)
