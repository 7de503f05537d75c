"""Finding and checking the official JSON annotation files of COCO and VQAv2 folders, and the images they name."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ravlm_core.errors import UserError
from ravlm_core.ingest.records import (
    DEFAULT_SPLIT,
    MAX_TEXT_CHARS,
    SPLIT_NAME,
    BadRow,
    ManifestError,
    not_a_file,
    unsafe_path,
)

# Where annotation files are looked for when none is given: the folder itself and COCO's `annotations/`.
ANNOTATION_DIRS = ("", "annotations")
# The image set a file name gives ("val2017", "test-dev2015", plain "train"); COCO keeps its images in a folder
# of that name.
IMAGE_SET = re.compile(r"(train|val|test)(-dev|-challenge)?(\d{4})?")


def source_folder(folder: Path) -> Path:
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise UserError(f"source folder {folder} does not exist")
    return folder


def existing_file(path: Path, what: str, option: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist: check the {option} path")
    return path


def search_dirs(folder: Path, beside: Path) -> list[Path]:
    return list(dict.fromkeys([folder / d for d in ANNOTATION_DIRS] + [beside.absolute().parent]))


def glob_in(dirs: list[Path], pattern: str) -> list[Path]:
    return sorted({path for d in dirs for path in d.glob(pattern) if path.is_file()})


def annotation_file(folder: Path, given: Path | None, pattern: str, what: str, option: str,
                     split: str | None) -> Path:
    """The given file, or the one file matching `pattern` in the folder or its annotations/ (an explicit split
    picks among several)."""
    if given is not None:
        return existing_file(given, what, option)
    found = glob_in([folder / d for d in ANNOTATION_DIRS], pattern)
    if split is not None and len(found) > 1:
        found = [path for path in found if image_set_of(path, pattern) == split] or found
    if len(found) == 1:
        return found[0]
    if not found:
        raise ManifestError(f"no {what} file ({pattern}) in {folder} or {folder / 'annotations'}: pass one with "
                            f"{option}")
    names = ", ".join(path.relative_to(folder).as_posix() for path in found)
    raise ManifestError(f"{folder} has several {what} files ({names}): pass one with {option}")


def image_set_of(path: Path, pattern: str) -> str | None:
    """The image set a file's name gives ("captions_val2017.json" -> "val2017"), if it gives one."""
    prefix, suffix = pattern.split("*")
    name = path.name
    if len(name) > len(prefix) + len(suffix) and name.startswith(prefix) and name.endswith(suffix):
        middle = name[len(prefix):len(name) - len(suffix)]
        return middle if IMAGE_SET.fullmatch(middle) else None
    return None


def split_for(split: str | None, image_set: str | None) -> str:
    if split is None:
        return image_set or DEFAULT_SPLIT
    if not isinstance(split, str) or not SPLIT_NAME.fullmatch(split):
        raise UserError(f"split {split!r} is not a plain name (letters, digits, '_', '.', '-'): rename it")
    return split


def image_dirs(image_set: str | None, split: str | None) -> list[str]:
    """Folders (relative to the source folder, "" for itself) that may hold the images, COCO's layout first."""
    named = [d for d in (image_set, split) if d and SPLIT_NAME.fullmatch(d)]
    return list(dict.fromkeys(named + [""]))


def locate(folder: Path, names: list[str], dirs: list[str], label: str) -> tuple[str, str | None]:
    """Find an image that may be listed as any of `names`, in any of `dirs`.

    Returns:
        (its relpath, None) for a regular file inside `folder` (symlinks resolved); else (the relpath it was
        expected at, why it cannot be read).
    """
    for name in names:
        # An absolute name, '..' or NUL is refused before any folder is tried. A single name without ':' cannot
        # be any of those, and skips the check (~half the time on COCO): the one below resolves its symlinks.
        if ("/" in name or ":" in name or "\x00" in name or name == "..") and (reason := unsafe_path(folder, name)):
            return name, reason
    candidates = [f"{d}/{name}" if d else name for name in names for d in dirs]
    for relpath in candidates:
        if os.path.lexists(f"{folder}/{relpath}"):
            return relpath, unsafe_path(folder, relpath) or not_a_file(folder, relpath)
    expected = next((c for c in candidates if (folder / c).parent.is_dir()), candidates[0])
    places = " or ".join(str(folder / d) if d else str(folder) for d in dirs)
    return expected, f"{label} is not in {places}: add the file there or fix the entry"


def require_records(path: Path, what: str, records: dict, bad: list[BadRow]) -> None:
    if not records:
        # Never read a file that yields nothing as "every image was removed".
        first = f" (first: {bad[0].ref}: {bad[0].reason})" if bad else ""
        raise ManifestError(f"{path} has no usable {what}{first}: fix it and rerun")


def load_json(path: Path, keys: tuple[str, ...], what: str, pattern: str) -> dict:
    """The file's top-level object, which must hold a list under each of `keys`."""
    try:
        data = json.loads(path.read_bytes())  # bytes: json detects UTF-8/16/32 and a BOM itself
    except OSError as err:
        raise ManifestError(f"{what} file {path} cannot be read ({err.strerror or err}): check it") from err
    except UnicodeDecodeError as err:
        raise ManifestError(f"{what} file {path} is not UTF-8 text (byte {err.start}): save it as UTF-8 JSON") from err
    except json.JSONDecodeError as err:
        raise ManifestError(f"{what} file {path} is not valid JSON ({err.msg} at line {err.lineno} column "
                            f"{err.colno}): fix it or download it again") from err
    except RecursionError as err:
        raise ManifestError(f"{what} file {path} is nested too deeply to be {what} JSON: pass a {pattern} "
                            "file") from err
    if not isinstance(data, dict):
        raise ManifestError(f"{what} file {path} holds a JSON {type(data).__name__}, not an object with "
                            f"{' and '.join(f'`{k}`' for k in keys)}: pass a {pattern} file")
    for key in keys:
        if not isinstance(data.get(key), list):
            found = ", ".join(str(k) for k in list(data)[:10]) or "none"
            raise ManifestError(f"{what} file {path} has no `{key}` list (its keys: {found}): pass a {pattern} file")
    return data


def string_field(value: object, name: str, required: bool = True) -> tuple[str | None, str | None]:
    """A JSON value as stripped text, or why it cannot be (`required=False`: missing and empty are None)."""
    if type(value) is str and 0 < len(value) <= MAX_TEXT_CHARS and not value[0].isspace() and not value[-1].isspace():
        return value, None  # the usual case, first: VQAv2 train has ~6M of these
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, (f"`{name}` is missing or empty: fill it in or remove the entry" if required else None)
    if not isinstance(value, str):
        return None, f"`{name}` is {describe(value)}, not text: write it as a string or remove the entry"
    text = value.strip()
    if len(text) > MAX_TEXT_CHARS:
        return None, f"`{name}` is {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,}: shorten it"
    return text, None


def is_id(value: object) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def describe(value: object) -> str:
    if value is None:
        return "missing"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:40] + '...'}"
