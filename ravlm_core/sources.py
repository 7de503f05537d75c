"""Image sources: the embedded easy-VQA dataset or a folder (with an optional manifest) as `SourceRecord`s."""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

EASY_VQA = "easy-vqa"
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "manifest.parquet")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
DEFAULT_SPLIT = "test"
# Splits name shard files ("<split>-<hash>.parquet"), so they must be one safe path component.
SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
YES_NO = frozenset({"yes", "no"})
# easy-VQA's drawing palette (gen_data/color.py in github.com/vzhou842/easy-VQA).
EASY_VQA_RGB = {
    "black": (0, 0, 0), "gray": (128, 128, 128), "red": (255, 0, 0), "green": (0, 255, 0),
    "blue": (0, 0, 255), "yellow": (255, 255, 0), "teal": (0, 128, 128), "brown": (165, 42, 42),
}
# Words that flip an easy-VQA yes/no question ("is there NOT a red shape?", "is NO circle present?").
NEGATIONS = frozenset({"not", "no"})


class ManifestError(ValueError):
    """A manifest that cannot be used at all (as opposed to single bad rows, which become `BadRow`s)."""


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    question_type: str | None = None


@dataclass
class SourceRecord:
    ref: str  # human reference for error messages: "manifest.csv row 12" or the image file path
    path: Path
    split: str
    caption: str | None
    qa: list[QAPair] = field(default_factory=list)


@dataclass(frozen=True)
class BadRow:
    ref: str
    reason: str  # what is wrong AND what to do about it


def open_source(source: str, manifest: Path | None = None) -> tuple[list[SourceRecord], list[BadRow]]:
    """Read a source's records without touching image bytes.

    Args:
        source: "easy-vqa", or a folder of images (with manifest.jsonl/.csv/.parquet, or none).
        manifest: an explicit manifest file for a folder source.
    Returns:
        The usable records (one per image path) and the rows that had to be skipped.
    Raises:
        FileNotFoundError: the folder or the explicit manifest does not exist.
        ManifestError: the manifest is ambiguous or lacks the `image` column.
    """
    if source == EASY_VQA:
        return _open_easy_vqa(), []
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"source {source!r} is neither {EASY_VQA!r} nor an existing folder")
    if manifest is None:
        manifest = _find_manifest(folder)
    elif not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    if manifest is None:
        return _open_plain_folder(folder), []
    return _open_manifest(folder, manifest)


# --- easy-VQA -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Vocabulary:
    colors: frozenset[str]
    shapes: frozenset[str]


def _open_easy_vqa() -> list[SourceRecord]:
    import easy_vqa  # only this source needs it

    splits = {
        "train": (easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()),
        "test": (easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()),
    }
    vocab = _easy_vqa_vocabulary([questions for questions, _ in splits.values()])
    records = []
    for split, ((texts, answers, image_nums), image_paths) in splits.items():
        qa_by_image: dict[int, list[QAPair]] = {num: [] for num in image_paths}
        for question, answer, num in zip(texts, answers, image_nums):
            qa_by_image[num].append(QAPair(question, answer, _easy_vqa_question_type(answer, vocab)))
        for num in sorted(image_paths):
            path = Path(image_paths[num])
            records.append(SourceRecord(str(path), path, split, _easy_vqa_caption(path, qa_by_image[num], vocab), qa_by_image[num]))
    log.info("easy-vqa: %d images, %d without a caption", len(records), sum(r.caption is None for r in records))
    return records


def _easy_vqa_vocabulary(question_sets: list[tuple[list, list, list]]) -> _Vocabulary:
    """Colour and shape words, learnt from what "what color ...?" / "what shape ...?" questions answer."""
    colors, shapes = set(), set()
    for texts, answers, _ in question_sets:
        for question, answer in zip(texts, answers):
            if question.startswith("what") and "color" in question:
                colors.add(answer)
            elif question.startswith("what shape"):
                shapes.add(answer)
    return _Vocabulary(frozenset(colors), frozenset(shapes))


def _easy_vqa_question_type(answer: str, vocab: _Vocabulary) -> str | None:
    if answer in YES_NO:
        return "yes/no"
    if answer in vocab.colors:
        return "color"
    return "shape" if answer in vocab.shapes else None


def _easy_vqa_caption(path: Path, qa: list[QAPair], vocab: _Vocabulary) -> str | None:
    """"a picture of a {color} {shape}" from the image's answers, with its pixels settling what they leave open."""
    colors, shapes = _color_shape_candidates(qa, vocab)
    if len(colors) > 1 or len(shapes) > 1:
        colors, shapes = _narrow_by_pixels(path, colors, shapes)
    if len(colors) != 1 or len(shapes) != 1:
        return None
    return f"a picture of a {next(iter(colors))} {next(iter(shapes))}"


def _color_shape_candidates(qa: list[QAPair], vocab: _Vocabulary) -> tuple[set[str], set[str]]:
    """The colours and shapes consistent with all of an image's answers."""
    colors, shapes = set(vocab.colors), set(vocab.shapes)
    for pair in qa:
        words = pair.question.rstrip("?").split()
        named_colors = {w for w in words if w in vocab.colors}
        named_shapes = {w for w in words if w in vocab.shapes}
        if pair.answer in vocab.colors:  # "what color is the circle?" -> red; the circle is named
            colors.intersection_update({pair.answer})
            shapes.intersection_update(named_shapes or shapes)
        elif pair.answer in vocab.shapes:  # "what is the blue shape?" -> circle; blue is named
            shapes.intersection_update({pair.answer})
            colors.intersection_update(named_colors or colors)
        elif pair.answer in YES_NO:
            present = (pair.answer == "yes") != bool(NEGATIONS & set(words))
            for named, candidates in ((named_colors, colors), (named_shapes, shapes)):
                if not named:
                    continue
                if present:
                    candidates.intersection_update(named)
                else:
                    candidates.difference_update(named)
    return colors, shapes


def _narrow_by_pixels(path: Path, colors: set[str], shapes: set[str]) -> tuple[set[str], set[str]]:
    """Pick among the candidates the answers left (easy-VQA samples its questions, ~11% of images stay open).

    easy-VQA paints each shape in one flat colour, so exact pixel matches give the shape's colour and mask.
    """
    import numpy as np  # lazy: only ambiguous easy-VQA images get here
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))  # (H, W, 3)
    masks = {c: (pixels == EASY_VQA_RGB[c]).all(axis=-1) for c in colors if c in EASY_VQA_RGB}  # (H, W) each
    color = max(masks, key=lambda c: masks[c].sum(), default=None)
    if color is None or not masks[color].any():
        return colors, shapes
    shape = _shape_of_mask(masks[color])
    return {color}, ({shape} & shapes) or shapes


def _shape_of_mask(mask) -> str:
    """Rectangle, circle or triangle from a (H, W) bool mask of one easy-VQA shape."""
    import numpy as np

    rows, cols = np.nonzero(mask)
    box_fill = mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))  # rectangles are axis-aligned: 1.0
    top_share = (rows < (rows.min() + rows.max()) / 2).mean()  # triangles point up: a thin top half
    if box_fill >= 0.95:
        return "rectangle"
    # On the 4,791 images whose answers fix the shape, fill + top share is <= 0.95 for triangles, >= 1.03 for circles.
    return "triangle" if box_fill + top_share < 0.99 else "circle"


# --- folders and manifests ------------------------------------------------------------------------


def _find_manifest(folder: Path) -> Path | None:
    found = [folder / name for name in MANIFEST_NAMES if (folder / name).is_file()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ManifestError(f"{folder} has several manifests ({names}): keep one or pass --manifest")
    return found[0] if found else None


def _open_plain_folder(folder: Path) -> list[SourceRecord]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    log.info("%s: no manifest, %d image files", folder, len(paths))
    return [SourceRecord(str(p), p, DEFAULT_SPLIT, None, []) for p in paths]


def _open_manifest(folder: Path, manifest: Path) -> tuple[list[SourceRecord], list[BadRow]]:
    rows, bad = _read_manifest(manifest)
    records: dict[str, SourceRecord] = {}
    for ref, row in rows:
        reason = _add_row(folder, ref, row, records)
        if reason:
            bad.append(BadRow(ref, reason))
    log.info("%s: %d rows, %d images, %d bad rows", manifest, len(rows), len(records), len(bad))
    return list(records.values()), bad


def _add_row(folder: Path, ref: str, row: dict, records: dict[str, SourceRecord]) -> str | None:
    """Merge one manifest row into `records` (keyed by image path); returns why it was skipped, if it was."""
    image, caption = _text(row.get("image")), _text(row.get("caption"))
    question, answer = _text(row.get("question")), _text(row.get("answer"))
    split = _text(row.get("split")) or DEFAULT_SPLIT
    if not SPLIT_NAME.fullmatch(split):
        return f"split {split!r} is not a plain name (letters, digits, '_', '.', '-'): rename it"
    if image is None:
        return f"no `image` value: fill in the image path (relative to {folder}) or remove the row"
    if (question is None) != (answer is None):
        given, missing = ("question", "answer") if answer is None else ("answer", "question")
        return f"has a {given} but no {missing}: add the {missing} or remove the row"
    key = os.path.normpath(image)
    path = folder / key
    if key not in records and not path.is_file():
        return f"image file {path} does not exist: fix the path (relative to {folder}) or remove the row"
    record = records.setdefault(key, SourceRecord(ref, path, split, None, []))
    if record.split != split:
        return f"{image} is in split {record.split!r} at {record.ref} but {split!r} here: give each image one split"
    record.caption = record.caption or caption
    if question is not None:
        record.qa.append(QAPair(question, answer, _text(row.get("question_type"))))
    return None


def _read_manifest(manifest: Path) -> tuple[list[tuple[str, dict]], list[BadRow]]:
    """(reference, row) pairs and unreadable rows; references count data rows from 1 (jsonl: line numbers)."""
    suffix = manifest.suffix.lower()
    bad: list[BadRow] = []
    if suffix == ".jsonl":
        rows, bad = _read_jsonl(manifest)
        columns = sorted({key for _, row in rows for key in row})
    elif suffix == ".csv":
        import pandas as pd  # lazy: only CSV manifests need it

        # Everything as text: names like "007" must stay text, and empty cells mean "missing".
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        columns, rows = list(table.columns), _numbered(manifest, table.to_dict("records"))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(manifest)
        columns, rows = table.column_names, _numbered(manifest, table.to_pylist())
    else:
        raise ManifestError(f"manifest {manifest} is not .jsonl, .csv or .parquet: convert it to one of those")
    if "image" not in columns:
        raise ManifestError(
            f"manifest {manifest} has no `image` column (it has: {', '.join(map(str, columns)) or 'none'}); "
            "add one with each image's path relative to the source folder"
        )
    return rows, bad


def _numbered(manifest: Path, rows: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{manifest.name} row {number}", row) for number, row in enumerate(rows, start=1)]


def _read_jsonl(manifest: Path) -> tuple[list[tuple[str, dict]], list[BadRow]]:
    rows, bad = [], []
    with manifest.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            ref = f"{manifest.name} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                bad.append(BadRow(ref, f"not valid JSON ({err}): fix the line or remove it"))
                continue
            if isinstance(row, dict):
                rows.append((ref, row))
            else:
                bad.append(BadRow(ref, "not a JSON object: write one object per line"))
    return rows, bad


def _text(value: object) -> str | None:
    """A manifest cell as stripped text; empty, null and NaN all mean missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value).strip() or None
