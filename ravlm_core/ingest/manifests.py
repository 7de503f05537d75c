"""A folder of images with a manifest (JSONL, CSV or Parquet: one row per image, or per caption / question), or a
plain folder of images; and `--questions` files."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path, PurePosixPath

from ravlm_core.errors import UserError
from ravlm_core.ingest.records import (
    DEFAULT_SPLIT,
    MAX_TEXT_CHARS,
    SPLIT_NAME,
    BadRow,
    ManifestError,
    QAPair,
    SourceRecord,
    not_a_file,
    unsafe_path,
)

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "manifest.parquet")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
TEXT_COLUMNS = ("image", "caption", "question", "answer", "question_type", "split")


def find_manifest(folder: Path) -> Path | None:
    found = [folder / name for name in MANIFEST_NAMES if (folder / name).is_file()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ManifestError(f"{folder} has several manifests ({names}): keep one or pass --manifest")
    return found[0] if found else None


def open_plain_folder(folder: Path) -> tuple[list[SourceRecord], list[BadRow]]:
    records, bad = [], []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
        relpath = path.relative_to(folder).as_posix()
        reason = unsafe_path(folder, relpath)
        if reason:
            bad.append(BadRow(str(path), reason))
        elif path.is_file():
            records.append(SourceRecord(str(path), path, relpath, DEFAULT_SPLIT, None, []))
    log.info("%s: no manifest, %d image files", folder, len(records))
    return records, bad


def open_manifest(folder: Path, manifest: Path) -> tuple[list[SourceRecord], list[BadRow]]:
    rows, bad = _read_manifest(manifest)
    records: dict[str, SourceRecord] = {}
    for ref, row in rows:
        reason = _add_row(folder, ref, row, records)
        if reason:
            image = row.get("image")
            bad.append(BadRow(ref, reason, PurePosixPath(image).as_posix() if isinstance(image, str) else None))
    log.info("%s: %d rows, %d images, %d captions, %d bad rows", manifest, len(rows), len(records),
             sum(len(r.captions) for r in records.values()), len(bad))
    if not records:
        # Never read a manifest that yields nothing as "every image was removed".
        first = f" (first: {bad[0].ref}: {bad[0].reason})" if bad else ""
        raise ManifestError(f"manifest {manifest} has no usable rows{first}: fix it and rerun")
    return list(records.values()), bad


def _add_row(folder: Path, ref: str, row: dict, records: dict[str, SourceRecord]) -> str | None:
    """Merge one manifest row into `records` (keyed by image path); returns why it was skipped, if it was."""
    values = {}
    for column in TEXT_COLUMNS:
        value, problem = _text(row.get(column), column)
        if problem:
            return problem
        values[column] = value
    image, caption, question, answer = (values[c] for c in ("image", "caption", "question", "answer"))
    split = values["split"] or DEFAULT_SPLIT
    if not SPLIT_NAME.fullmatch(split):
        return f"split {split!r} is not a plain name (letters, digits, '_', '.', '-'): rename it"
    if image is None:
        return f"no `image` value: fill in the image path (relative to {folder}) or remove the row"
    if (question is None) != (answer is None):
        given, missing = ("question", "answer") if answer is None else ("answer", "question")
        return f"has a {given} but no {missing}: add the {missing} or remove the row"
    key = PurePosixPath(image.replace("\\", "/")).as_posix()
    if key not in records:
        reason = unsafe_path(folder, key) or not_a_file(folder, key)
        if reason:
            return reason
    record = records.setdefault(key, SourceRecord(ref, folder / key, key, split, None, []))
    if record.split != split:
        return f"{image} is in split {record.split!r} at {record.ref} but {split!r} here: give each image one split"
    # A row that repeats an image with another caption (one row per caption, as Flickr8k and COCO exports
    # come) adds that caption: every distinct one is kept in row order, the first is `caption`.
    if caption is not None and caption not in record.captions:
        record.captions.append(caption)
    record.caption = record.captions[0] if record.captions else None
    if question is not None:
        record.qa.append(QAPair(question, answer, values["question_type"]))
    for column, value in row.items():
        if column not in TEXT_COLUMNS and _jsonable(value):
            record.extra.setdefault(str(column), value)
    return None


def _jsonable(value: object) -> bool:
    """Extra columns are kept when they can be stored as JSON; empty cells are missing, not values."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return False
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _read_manifest(manifest: Path) -> tuple[list[tuple[str, dict]], list[BadRow]]:
    """(reference, row) pairs and unreadable rows; references count data rows from 1 (jsonl: line numbers)."""
    suffix = manifest.suffix.lower()
    bad: list[BadRow] = []
    if suffix == ".jsonl":
        rows, bad = _read_jsonl(manifest)
        columns = sorted({key for _, row in rows for key in row})
    elif suffix == ".csv":
        columns, rows = _read_csv(manifest)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(manifest)
        except (pa.ArrowException, OSError) as err:
            raise ManifestError(f"manifest {manifest} is not a readable Parquet file ({_one_line(err)})") from err
        columns, rows = table.column_names, _numbered(manifest, table.to_pylist())
    else:
        raise ManifestError(f"manifest {manifest} is not .jsonl, .csv or .parquet: convert it to one of those")
    if not rows and not bad:
        raise ManifestError(f"manifest {manifest} has no rows: list at least one image (or remove the manifest)")
    if "image" not in columns:
        raise ManifestError(
            f"manifest {manifest} has no `image` column (it has: {', '.join(map(str, columns)) or 'none'}); "
            "add one with each image's path relative to the source folder"
        )
    return rows, bad


def _read_csv(manifest: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    import pandas as pd  # lazy: only CSV manifests need it

    try:
        # Everything as text: names like "007" must stay text, and empty cells mean "missing".
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError as err:
        raise ManifestError(f"manifest {manifest} is empty: list at least one image (or remove it)") from err
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise ManifestError(f"manifest {manifest} is not valid UTF-8 CSV ({_one_line(err)}): fix it") from err
    # CSV rows count from 1 after the header line, so "row 3" is the file's fourth line.
    return [str(c) for c in table.columns], _numbered(manifest, table.to_dict("records"))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:200] + "..."


def _numbered(manifest: Path, rows: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{manifest.name} row {number}", row) for number, row in enumerate(rows, start=1)]


def _read_jsonl(manifest: Path) -> tuple[list[tuple[str, dict]], list[BadRow]]:
    rows, bad = [], []
    try:
        text = manifest.read_text(encoding="utf-8-sig")  # -sig: Notepad and Excel start UTF-8 files with a BOM
    except UnicodeDecodeError as err:
        raise ManifestError(f"manifest {manifest} is not UTF-8 text (byte {err.start}): save it as UTF-8 JSON lines") from err
    # Lines end at "\n" only: str.splitlines would also split inside JSON strings holding U+2028 and the like.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        ref = f"{manifest.name} line {number}"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            bad.append(BadRow(ref, f"not valid JSON ({_one_line(err)}): fix the line or remove it"))
            continue
        if isinstance(row, dict):
            rows.append((ref, row))
        else:
            bad.append(BadRow(ref, "not a JSON object: write one object per line"))
    return rows, bad


def _text(value: object, column: str) -> tuple[str | None, str | None]:
    """A manifest cell as stripped text, or why it cannot be one. Empty, null and NaN mean missing; numbers are
    taken as text (answers like 2); lists, objects and booleans are errors."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"`{column}` is {type(value).__name__} {_preview(value)}, not text: write it as a string"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if len(text) > MAX_TEXT_CHARS:
        return None, f"`{column}` is {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,}: shorten it"
    return text or None, None


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def read_questions_file(path: Path) -> list[str]:
    """Questions to ask of every image of an unlabeled query set: a text file with one question per line, or a
    .jsonl / .csv file with a `question` column. Duplicates are dropped, order kept.

    Raises:
        UserError: the file is missing, unreadable or holds no question.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"questions file {path} does not exist")
    if path.suffix.lower() in (".jsonl", ".csv"):
        rows = _read_jsonl(path)[0] if path.suffix.lower() == ".jsonl" else _read_csv(path)[1]
        values = [_text(row.get("question"), "question") for _, row in rows]
        questions = [text for text, problem in values if text and not problem]
    else:
        try:
            questions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as err:
            raise UserError(f"questions file {path} is not UTF-8 text: save it as UTF-8") from err
    questions = list(dict.fromkeys(q for q in questions if q and len(q) <= MAX_TEXT_CHARS))
    if not questions:
        raise UserError(f"questions file {path} holds no question: write one question per line")
    return questions
