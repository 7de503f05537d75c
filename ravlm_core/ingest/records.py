"""What every source reader yields: `SourceRecord`s (one per image path, with its annotations) and `BadRow`s
(what was skipped and what to do), and the checks a path from a source must pass."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ravlm_core.errors import UserError

DEFAULT_SPLIT = "test"
# Splits name shard files ("<split>-<hash>.parquet"), so they must be one safe path component.
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Longer text is a broken or hostile row, not an annotation (COCO captions are ~60 characters).
MAX_TEXT_CHARS = 10_000

# The end of a bad row's reason when the file itself is the problem.
FIX_FILE = "fix or remove the file and rerun"


class ManifestError(UserError, ValueError):
    """A manifest that cannot be used at all (as opposed to single bad rows, which become `BadRow`s)."""


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str  # the answer: a single one, or the consensus of `answers`
    question_type: str | None = None
    # Every human answer when the source has several (VQAv2: 10), for soft accuracy; empty otherwise.
    answers: tuple[str, ...] = ()


@dataclass
class SourceRecord:
    ref: str  # human reference for error messages: "manifest.csv row 12" or the image file path
    path: Path  # the file to read, inside the source folder
    relpath: str  # its path relative to the source folder (posix): with the dataset, the membership's key
    split: str
    caption: str | None  # the first reference caption
    qa: list[QAPair] = field(default_factory=list)
    # Every distinct reference caption, `caption` first: COCO's five, a manifest's one per row naming the image;
    # empty where a reader gives `caption` alone (easy-VQA).
    captions: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # the manifest's other columns (first value seen per column)


@dataclass(frozen=True)
class BadRow:
    ref: str
    reason: str  # what is wrong AND what to do about it
    # The image path the row names, when it names one: a listed image whose row is broken is not "removed".
    relpath: str | None = None


def unsafe_path(folder: Path, relpath: str) -> str | None:
    """Why a manifest path may not be read: it must name a file inside the source folder, symlinks resolved."""
    if "\x00" in relpath:
        return f"image path {relpath!r} contains a NUL character: fix the path"
    pure = PurePosixPath(relpath)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", relpath):
        return f"image path {relpath!r} is absolute: give it relative to {folder} (files outside it are never read)"
    if ".." in pure.parts:
        return f"image path {relpath!r} leaves {folder} with '..': move the file into the folder"
    try:
        resolved = (folder / relpath).resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python 3.11)
        return f"image path {relpath!r} cannot be resolved ({getattr(err, 'strerror', None) or err}): fix the path"
    if not resolved.is_relative_to(folder.resolve()):
        return f"image path {relpath!r} is a symlink to {resolved}, outside {folder}: copy the file into the folder"
    return None


def not_a_file(folder: Path, relpath: str) -> str | None:
    path = folder / relpath
    try:
        if path.is_file():
            return None
        what = ("is a folder, not a file" if path.is_dir() else "is not a regular file (a device, pipe or socket)"
                if path.exists() else "does not exist")
    except OSError as err:  # e.g. a name too long for the file system
        what = f"cannot be checked ({err.strerror or err})"
    return f"image file {path} {what}: fix the path (relative to {folder}) or remove the row"
