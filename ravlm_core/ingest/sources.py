"""Image sources: easy-VQA, or a folder (with a manifest, COCO or VQAv2 files, or none) as `SourceRecord`s."""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ravlm_core.errors import UserError

log = logging.getLogger(__name__)

EASY_VQA = "easy-vqa"
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "manifest.parquet")
FORMATS = ("auto", "manifest", "folder", "coco", "vqav2")
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
TEXT_COLUMNS = ("image", "caption", "question", "answer", "question_type", "split")
# Longer text is a broken or hostile row, not an annotation (COCO captions are ~60 characters).
MAX_TEXT_CHARS = 10_000


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
    # Every reference caption when the source has several (COCO: 5), `caption` first; empty otherwise.
    captions: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # the manifest's other columns (first value seen per column)


@dataclass(frozen=True)
class BadRow:
    ref: str
    reason: str  # what is wrong AND what to do about it
    # The image path the row names, when it names one: a listed image whose row is broken is not "removed".
    relpath: str | None = None


def open_source(source: str, manifest: Path | None = None, *, fmt: str = "auto", annotations: Path | None = None,
                questions: Path | None = None) -> tuple[list[SourceRecord], list[BadRow]]:
    """Read a source's records without touching image bytes.

    Args:
        source: "easy-vqa", or a folder of images.
        manifest: an explicit manifest file for a folder source ("auto" and "manifest" formats).
        fmt: how to read the folder: "auto" (a manifest.jsonl/.csv/.parquet if there is one, else every image),
            "manifest" (one is required), "folder" (every image, manifests ignored), "coco" (COCO captions JSON)
            or "vqav2" (VQAv2 questions and annotations JSON); see `ravlm_core.ingest.formats`.
        annotations: "coco": the captions_*.json file; "vqav2": the v2_mscoco_*_annotations.json file.
        questions: "vqav2": the v2_OpenEnded_mscoco_*_questions.json file.
    Returns:
        The usable records (one per image path) and the rows that had to be skipped.
    Raises:
        UserError: an unknown format, an option the format does not take, or a folder or file that does not exist.
        ManifestError: the manifest or annotation files are unreadable, ambiguous, empty or of the wrong shape.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown source format {fmt!r}: choose one of {', '.join(FORMATS)}")
    _check_format_options(fmt, manifest, annotations, questions)
    if source == EASY_VQA:
        if fmt != "auto":
            raise UserError(f"{EASY_VQA!r} is the built-in dataset: --format {fmt} needs a folder "
                            f"(write ./{EASY_VQA} for a folder of that name)")
        return _open_easy_vqa(), []
    folder = Path(source).absolute()
    if not folder.is_dir():
        raise UserError(f"source {source!r} is neither {EASY_VQA!r} nor an existing folder")
    if fmt in ("coco", "vqav2"):
        from ravlm_core.ingest import formats  # it imports this module

        if fmt == "coco":
            return formats.open_coco(folder, annotations)
        return formats.open_vqav2(folder, questions, annotations)
    if fmt == "folder":
        return _open_plain_folder(folder)
    if manifest is None:
        manifest = _find_manifest(folder)
    elif not manifest.is_file():
        raise UserError(f"manifest {manifest} does not exist")
    if manifest is None:
        if fmt == "manifest":
            raise ManifestError(f"{folder} has no manifest ({', '.join(MANIFEST_NAMES)}): add one, pass --manifest "
                                "or use --format folder")
        return _open_plain_folder(folder)
    return _open_manifest(folder, manifest)


def _check_format_options(fmt: str, manifest: Path | None, annotations: Path | None, questions: Path | None) -> None:
    """Options a format would ignore are mistakes: say so instead of reading the source another way."""
    takes = {"--manifest": ("auto", "manifest"), "--annotations": ("coco", "vqav2"), "--questions": ("vqav2",)}
    for option, value in (("--manifest", manifest), ("--annotations", annotations), ("--questions", questions)):
        if value is not None and fmt not in takes[option]:
            allowed = " or ".join(takes[option])
            raise UserError(f"{option} goes with --format {allowed}, not {fmt}: drop it or change the format")


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
            caption = _easy_vqa_caption(path, qa_by_image[num], vocab)
            records.append(SourceRecord(str(path), path, f"{split}/{path.name}", split, caption, qa_by_image[num]))
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


def _open_plain_folder(folder: Path) -> tuple[list[SourceRecord], list[BadRow]]:
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


def _open_manifest(folder: Path, manifest: Path) -> tuple[list[SourceRecord], list[BadRow]]:
    rows, bad = _read_manifest(manifest)
    records: dict[str, SourceRecord] = {}
    for ref, row in rows:
        reason = _add_row(folder, ref, row, records)
        if reason:
            image = row.get("image")
            bad.append(BadRow(ref, reason, PurePosixPath(image).as_posix() if isinstance(image, str) else None))
    log.info("%s: %d rows, %d images, %d bad rows", manifest, len(rows), len(records), len(bad))
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
    record.caption = record.caption or caption
    if question is not None:
        record.qa.append(QAPair(question, answer, values["question_type"]))
    for column, value in row.items():
        if column not in TEXT_COLUMNS and _jsonable(value):
            record.extra.setdefault(str(column), value)
    return None


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
