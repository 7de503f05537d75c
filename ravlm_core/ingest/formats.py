"""COCO captions and VQAv2 folders: their official JSON files and image layouts read as `SourceRecord`s."""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ravlm_core.errors import UserError
from ravlm_core.ingest.sources import (DEFAULT_SPLIT, MAX_TEXT_CHARS, SPLIT_NAME, BadRow, ManifestError, QAPair,
                                SourceRecord, not_a_file, unsafe_path)

log = logging.getLogger(__name__)

# Where annotation files are looked for when none is given: the folder itself and COCO's `annotations/`.
ANNOTATION_DIRS = ("", "annotations")
COCO_CAPTIONS = "captions_*.json"  # captions_val2017.json, captions_train2014.json
VQA_QUESTIONS = "v2_OpenEnded_mscoco_*_questions.json"  # v2_OpenEnded_mscoco_val2014_questions.json
VQA_ANNOTATIONS = "v2_mscoco_*_annotations.json"  # v2_mscoco_val2014_annotations.json
# The image set a file name gives ("val2017", "test-dev2015", plain "train"); COCO keeps its images in a folder
# of that name.
IMAGE_SET = re.compile(r"(train|val|test)(-dev|-challenge)?(\d{4})?")


@dataclass
class _CocoCaptions:
    """A captions file's usable image entries and captions by COCO id, and the entries that are not usable."""
    images: dict[int, tuple[int, str, str, dict]] = field(default_factory=dict)  # id -> (index, ref, file_name, extra)
    captions: dict[int, list[str]] = field(default_factory=dict)  # id -> its captions in annotation id order
    image_bad: dict[int, BadRow] = field(default_factory=dict)  # index in `images` -> why it is not usable
    caption_bad: list[BadRow] = field(default_factory=list)


def open_coco(folder: Path, annotations: Path | None = None,
              split: str | None = None) -> tuple[list[SourceRecord], list[BadRow]]:
    """Read a COCO captions folder: one record per listed image, with all its captions (the first as `caption`).

    Args:
        folder: the image folder. Each `file_name` is looked up in `folder/<image set>/` (COCO's layout, the set
            named like the annotations file: `val2017/`) and in `folder`; it must stay inside `folder`.
        annotations: the captions JSON (default: the one captions_*.json in `folder` or `folder/annotations`).
        split: the records' split (default: the image set the file name gives, e.g. "val2017", else "test").
    Returns:
        The usable records and the entries that had to be skipped (images without a caption are records).
    Raises:
        UserError: the folder or the given annotations file does not exist, or the split is not a plain name.
        ManifestError: no or several captions files found; a file that is not COCO captions JSON; no usable image.
    """
    folder = _folder(folder)
    annotations = _annotation_file(folder, annotations, COCO_CAPTIONS, "COCO captions", "--annotations", split)
    image_set = _image_set(annotations, COCO_CAPTIONS)
    dirs = _image_dirs(image_set, split)
    split = _split(split, image_set)
    coco = _read_coco_captions(annotations)
    records: dict[str, SourceRecord] = {}
    image_bad = dict(coco.image_bad)
    for image_id, (index, ref, file_name, extra) in coco.images.items():
        relpath, reason = _locate(folder, [file_name], dirs, f"image {file_name!r}")
        if reason is None and relpath in records:
            reason = f"{relpath} is already listed at {records[relpath].ref}: remove the duplicate entry"
        if reason:
            image_bad[index] = BadRow(ref, reason, relpath)
            continue
        captions = coco.captions.get(image_id, [])
        records[relpath] = SourceRecord(ref, folder / relpath, relpath, split, captions[0] if captions else None,
                                        captions=captions, extra=extra)
    bad = [image_bad[index] for index in sorted(image_bad)]
    _require_records(annotations, "images", records, bad)
    bad += coco.caption_bad
    log.info("%s: %d images (%d without a caption), %d bad entries", annotations, len(records),
             sum(r.caption is None for r in records.values()), len(bad))
    return list(records.values()), bad


def open_vqav2(folder: Path, questions: Path | None = None, annotations: Path | None = None,
               split: str | None = None, captions: Path | None = None) -> tuple[list[SourceRecord], list[BadRow]]:
    """Read a VQAv2 folder: one record per image asked about, each question with its human answers.

    Args:
        folder: the COCO image folder. The image of COCO id N is `COCO_<image set>_<N as 12 digits>.jpg` or
            `<N as 12 digits>.jpg` in `folder/<image set>/` or `folder` (or a captions file's `file_name`).
        questions: v2_OpenEnded_mscoco_<image set>_questions.json (default: the one in `folder` or
            `folder/annotations`).
        annotations: v2_mscoco_<image set>_annotations.json (default: the one of the questions' image set in
            those folders or next to the questions).
        split: the records' split (default: the image set, e.g. "val2014", else "test").
        captions: a COCO captions file of the same images (default: captions_<image set>.json in those folders,
            if there is one): its `file_name`s locate images, its captions become the records' captions.
    Returns:
        The usable records and the entries that had to be skipped. Each `QAPair` has `answer` =
        multiple_choice_answer, VQAv2's `question_type` and `answers` = the human answers in answer_id order.
    Raises:
        UserError: the folder or a given file does not exist, or the split is not a plain name.
        ManifestError: no annotations (VQAv2 test-dev has none), no or several candidate files, a file that is
            not VQAv2 JSON, questions and annotations that do not match, or no usable question.
    """
    folder = _folder(folder)
    _split(split, None)  # a bad explicit split fails before any big file is read
    questions = _annotation_file(folder, questions, VQA_QUESTIONS, "VQAv2 questions", "--questions", split)
    image_set = _image_set(questions, VQA_QUESTIONS)
    annotations = _vqa_annotations(folder, questions, annotations, image_set)
    question_file = _load_json(questions, ("questions",), "VQAv2 questions", VQA_QUESTIONS)
    asked = question_file["questions"]
    subtype = question_file.get("data_subtype")  # VQAv2's own name of the set: for renamed files
    image_set = image_set or (subtype if isinstance(subtype, str) and IMAGE_SET.fullmatch(subtype) else None)
    answered = _load_json(annotations, ("annotations",), "VQAv2 annotations", VQA_ANNOTATIONS)["annotations"]
    coco = _vqa_captions(folder, questions, captions, image_set)
    dirs = _image_dirs(image_set, split)
    split = _split(split, image_set)

    by_question_id, bad = _index_annotations(answered, annotations.name)
    images = _VqaImages(folder, dirs, image_set, coco)
    records: dict[int, SourceRecord] = {}
    seen: dict[int, str] = {}  # question id -> its ref
    matched = 0
    for index, entry in enumerate(asked):
        ref = f"{questions.name} questions[{index}]"
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        relpath, pair = None, None
        if not isinstance(entry, dict):
            reason = f"is {_describe(entry)}, not an object: remove it"
        elif not _is_id(image_id):
            reason = f"`image_id` is {_describe(image_id)}, not a COCO image id: fix it or remove the question"
        else:
            relpath, reason = images.find(image_id)
            question_id = entry.get("question_id")
            position = by_question_id.get(question_id) if _is_id(question_id) else None
            matched += position is not None
            if reason is None:
                reason = _question_problem(question_id, position, seen, annotations.name)
            if reason is None:
                seen[question_id] = ref
                pair, reason = _qa_pair(entry, answered[position], f"{annotations.name} annotations[{position}]")
        if reason:
            bad.append(BadRow(ref, reason, relpath))
            continue
        if image_id not in records:
            records[image_id] = _vqa_record(folder, relpath, image_id, split, coco)
        records[image_id].qa.append(pair)
    if asked and not matched:
        raise ManifestError(f"none of the questions in {questions} has answers in {annotations}: pass the "
                            f"annotations of the same split (v2_mscoco_<set>_annotations.json)")
    _require_records(questions, "questions", records, bad)
    if coco:
        bad += [coco.image_bad[index] for index in sorted(coco.image_bad)] + coco.caption_bad
    log.info("%s: %d images, %d questions, %d bad entries", questions, len(records),
             sum(len(r.qa) for r in records.values()), len(bad))
    return list(records.values()), bad


# --- COCO captions --------------------------------------------------------------------------------


def _read_coco_captions(path: Path) -> _CocoCaptions:
    """Check a captions file's entries once: ids, file names and captions, without touching the image folder."""
    data = _load_json(path, ("images", "annotations"), "COCO captions", COCO_CAPTIONS)
    annotations = data["annotations"]
    if annotations and not any(isinstance(a, dict) and "caption" in a for a in annotations):
        raise ManifestError(f"COCO captions file {path} has no `caption` in its annotations: it looks like an "
                            f"instances or keypoints file; pass a {COCO_CAPTIONS} file")
    coco = _CocoCaptions()
    by_name: dict[str, str] = {}  # file_name -> the ref that lists it
    rejected: set[int] = set()  # ids of unusable image entries: their captions go with them, unreported
    for index, entry in enumerate(data["images"]):
        ref = f"{path.name} images[{index}]"
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        named = isinstance(file_name, str) and file_name.strip()
        relpath = PurePosixPath(file_name.replace("\\", "/")).as_posix() if named else None
        if not isinstance(entry, dict):
            reason = f"is {_describe(entry)}, not an object: remove it"
        elif not named:
            reason = f"`file_name` is {_describe(file_name)}, not a file name: give the image's path or remove it"
        elif not _is_id(image_id):
            reason = f"`id` is {_describe(image_id)}, not an integer: give the image its COCO id or remove it"
        elif image_id in coco.images:
            reason = f"id {image_id} is already {coco.images[image_id][1]}: give each image its own id"
        elif relpath in by_name:
            reason = f"file_name {file_name!r} is already {by_name[relpath]}: remove the duplicate entry"
        else:
            by_name[relpath] = ref
            coco.images[image_id] = (index, ref, relpath, _coco_extra(entry))
            continue
        coco.image_bad[index] = BadRow(ref, reason, relpath)
        if _is_id(image_id) and image_id not in coco.images:
            rejected.add(image_id)
    keyed: dict[int, list[tuple[tuple[int, int], str]]] = {}  # id -> [(order, caption)]
    for index, entry in enumerate(annotations):
        ref = f"{path.name} annotations[{index}]"
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        if not isinstance(entry, dict):
            coco.caption_bad.append(BadRow(ref, f"is {_describe(entry)}, not an object: remove it"))
            continue
        if _is_id(image_id) and image_id in rejected:
            continue
        if not _is_id(image_id) or image_id not in coco.images:
            problem = (f"image_id {image_id} is not in `images`" if _is_id(image_id)
                       else f"`image_id` is {_describe(image_id)}, not an image id")
            coco.caption_bad.append(BadRow(ref, f"{problem}: fix the id or remove the caption"))
            continue
        caption, problem = _string(entry.get("caption"), "caption")
        if problem:
            coco.caption_bad.append(BadRow(ref, problem, coco.images[image_id][2]))
            continue
        annotation_id = entry.get("id")
        order = (0, annotation_id) if _is_id(annotation_id) else (1, index)  # by id; entries without one last
        keyed.setdefault(image_id, []).append((order, caption))
    coco.captions = {image_id: [text for _, text in sorted(pairs, key=lambda p: p[0])]
                     for image_id, pairs in keyed.items()}
    return coco


def _coco_extra(entry: dict) -> dict:
    extra = {"coco_id": entry["id"]}
    for key in ("coco_url", "license"):
        value = entry.get(key)
        if _is_id(value) or (isinstance(value, str) and 0 < len(value) <= MAX_TEXT_CHARS):
            extra[key] = value
    return extra


# --- VQAv2 ----------------------------------------------------------------------------------------


def _vqa_annotations(folder: Path, questions: Path, given: Path | None, image_set: str | None) -> Path:
    """The annotations of the questions' image set; their absence is an error that says where to go instead."""
    if given is not None:
        return _existing(given, "VQAv2 annotations", "--annotations")
    name = VQA_ANNOTATIONS.replace("*", image_set) if image_set else VQA_ANNOTATIONS
    found = _glob(_search_dirs(folder, questions), name)
    if len(found) == 1:
        return found[0]
    if found:
        raise ManifestError(f"several VQAv2 annotations files ({', '.join(map(str, found))}): pass one with "
                            "--annotations")
    raise ManifestError(
        f"no VQAv2 annotations ({name}) for {questions.name} in {folder}, {folder / 'annotations'} or "
        f"{questions.parent}: pass them with --annotations. Questions without annotations (test-dev) are not a "
        "labeled source: ingest their images with --format coco or as a plain folder and ask with "
        "`ravlm vqa --questions FILE` (one question per line)")


def _vqa_captions(folder: Path, questions: Path, given: Path | None, image_set: str | None) -> _CocoCaptions | None:
    """The optional COCO captions of the same images: the given file, or the one named for the image set."""
    if given is not None:
        path = _existing(given, "COCO captions", "captions")
    else:
        found = _glob(_search_dirs(folder, questions), f"captions_{image_set}.json") if image_set else []
        if len(found) != 1:
            return None
        path = found[0]
    log.info("%s: captions and file names from %s", questions, path)
    return _read_coco_captions(path)


def _index_annotations(annotations: list, name: str) -> tuple[dict[int, int], list[BadRow]]:
    """question_id -> position in `annotations` (not copied: the train file holds 4.4M answers)."""
    positions: dict[int, int] = {}
    bad = []
    for index, entry in enumerate(annotations):
        question_id = entry.get("question_id") if isinstance(entry, dict) else None
        if _is_id(question_id) and question_id not in positions:
            positions[question_id] = index
            continue
        problem = (f"question_id {question_id} is already annotations[{positions[question_id]}]"
                   if _is_id(question_id) else f"`question_id` is {_describe(question_id)}, not an integer")
        bad.append(BadRow(f"{name} annotations[{index}]", f"{problem}: remove the entry"))
    return positions, bad


@dataclass
class _VqaImages:
    """Finds the image of a COCO id once: by the captions file's `file_name`, else by COCO's naming."""
    folder: Path
    dirs: list[str]
    image_set: str | None
    coco: _CocoCaptions | None
    located: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # id -> (relpath, why unreadable)
    owner: dict[str, int] = field(default_factory=dict)  # relpath -> the id it was found for

    def find(self, image_id: int) -> tuple[str, str | None]:
        if image_id not in self.located:
            names = [self.coco.images[image_id][2]] if self.coco and image_id in self.coco.images else []
            if self.image_set:
                names.append(f"COCO_{self.image_set}_{image_id:012d}.jpg")  # the 2014 names VQAv2 came with
            names.append(f"{image_id:012d}.jpg")  # COCO 2017's names
            names = list(dict.fromkeys(names))
            relpath, reason = _locate(self.folder, names, self.dirs, f"image_id {image_id} ({' or '.join(names)})")
            if reason is None and self.owner.setdefault(relpath, image_id) != image_id:
                reason = f"image_id {image_id} names {relpath}, the image of id {self.owner[relpath]}: fix the ids"
            self.located[image_id] = relpath, reason
        return self.located[image_id]


def _question_problem(question_id: object, position: int | None, seen: dict[int, str], name: str) -> str | None:
    """Why a question cannot be matched to its answers, if it cannot."""
    if not _is_id(question_id):
        return f"`question_id` is {_describe(question_id)}, not an integer: fix it or remove the question"
    if question_id in seen:
        return f"question_id {question_id} is already {seen[question_id]}: remove the duplicate"
    if position is None:
        return (f"question_id {question_id} has no answers in {name}: pass the annotations of the same split or "
                "remove the question")
    return None


def _qa_pair(entry: dict, annotation: dict, ref: str) -> tuple[QAPair | None, str | None]:
    """A question with its annotation, or why they cannot make one (`ref` names the annotation)."""
    question, problem = _string(entry.get("question"), "question")
    if problem:
        return None, problem
    if annotation.get("image_id") != entry["image_id"]:
        return None, (f"{ref} is about image_id {annotation.get('image_id')!r}, not {entry['image_id']}: "
                      "pass questions and annotations of the same release")
    answer, problem = _string(annotation.get("multiple_choice_answer"), "multiple_choice_answer")
    question_type, type_problem = _string(annotation.get("question_type"), "question_type", required=False)
    answers, answers_problem = _human_answers(annotation.get("answers"))
    problem = problem or type_problem or answers_problem
    if problem:
        return None, f"{ref}: {problem}"
    return QAPair(question, answer, question_type, answers), None


def _human_answers(value: object) -> tuple[tuple[str, ...], str | None]:
    """VQAv2's `answers` ([{answer, answer_confidence, answer_id}]; plain strings too) in answer_id order."""
    if not isinstance(value, list):
        return (), f"`answers` is {_describe(value)}, not a list of answers: fix the annotation or remove it"
    keyed = []  # (0, answer_id, text), or (1, position, text) without an id: those go last, in file order
    for position, item in enumerate(value):
        text, answer_id = (item.get("answer"), item.get("answer_id")) if type(item) is dict else (item, None)
        text, problem = _string(text, f"answers[{position}]", required=False)
        if problem:
            return (), problem
        if text is not None:
            keyed.append((0, answer_id, text) if _is_id(answer_id) else (1, position, text))
    keyed.sort()
    return tuple(text for _, _, text in keyed), None


def _vqa_record(folder: Path, relpath: str, image_id: int, split: str, coco: _CocoCaptions | None) -> SourceRecord:
    if coco and image_id in coco.images:
        _, ref, _, extra = coco.images[image_id]
        captions = coco.captions.get(image_id, [])
    else:
        ref, extra, captions = str(folder / relpath), {"coco_id": image_id}, []
    return SourceRecord(ref, folder / relpath, relpath, split, captions[0] if captions else None,
                        captions=list(captions), extra=dict(extra))


# --- shared ---------------------------------------------------------------------------------------


def _folder(folder: Path) -> Path:
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise UserError(f"source folder {folder} does not exist")
    return folder


def _existing(path: Path, what: str, option: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist: check the {option} path")
    return path


def _search_dirs(folder: Path, beside: Path) -> list[Path]:
    return list(dict.fromkeys([folder / d for d in ANNOTATION_DIRS] + [beside.absolute().parent]))


def _glob(dirs: list[Path], pattern: str) -> list[Path]:
    return sorted({path for d in dirs for path in d.glob(pattern) if path.is_file()})


def _annotation_file(folder: Path, given: Path | None, pattern: str, what: str, option: str,
                     split: str | None) -> Path:
    """The given file, or the one file matching `pattern` in the folder or its annotations/ (an explicit split
    picks among several)."""
    if given is not None:
        return _existing(given, what, option)
    found = _glob([folder / d for d in ANNOTATION_DIRS], pattern)
    if split is not None and len(found) > 1:
        found = [path for path in found if _image_set(path, pattern) == split] or found
    if len(found) == 1:
        return found[0]
    if not found:
        raise ManifestError(f"no {what} file ({pattern}) in {folder} or {folder / 'annotations'}: pass one with "
                            f"{option}")
    names = ", ".join(path.relative_to(folder).as_posix() for path in found)
    raise ManifestError(f"{folder} has several {what} files ({names}): pass one with {option}")


def _image_set(path: Path, pattern: str) -> str | None:
    """The image set a file's name gives ("captions_val2017.json" -> "val2017"), if it gives one."""
    prefix, suffix = pattern.split("*")
    name = path.name
    if len(name) > len(prefix) + len(suffix) and name.startswith(prefix) and name.endswith(suffix):
        middle = name[len(prefix):len(name) - len(suffix)]
        return middle if IMAGE_SET.fullmatch(middle) else None
    return None


def _split(split: str | None, image_set: str | None) -> str:
    if split is None:
        return image_set or DEFAULT_SPLIT
    if not isinstance(split, str) or not SPLIT_NAME.fullmatch(split):
        raise UserError(f"split {split!r} is not a plain name (letters, digits, '_', '.', '-'): rename it")
    return split


def _image_dirs(image_set: str | None, split: str | None) -> list[str]:
    """Folders (relative to the source folder, "" for itself) that may hold the images, COCO's layout first."""
    named = [d for d in (image_set, split) if d and SPLIT_NAME.fullmatch(d)]
    return list(dict.fromkeys(named + [""]))


def _locate(folder: Path, names: list[str], dirs: list[str], label: str) -> tuple[str, str | None]:
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


def _require_records(path: Path, what: str, records: dict, bad: list[BadRow]) -> None:
    if not records:
        # Never read a file that yields nothing as "every image was removed".
        first = f" (first: {bad[0].ref}: {bad[0].reason})" if bad else ""
        raise ManifestError(f"{path} has no usable {what}{first}: fix it and rerun")


def _load_json(path: Path, keys: tuple[str, ...], what: str, pattern: str) -> dict:
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


def _string(value: object, name: str, required: bool = True) -> tuple[str | None, str | None]:
    """A JSON value as stripped text, or why it cannot be (`required=False`: missing and empty are None)."""
    if type(value) is str and 0 < len(value) <= MAX_TEXT_CHARS and not value[0].isspace() and not value[-1].isspace():
        return value, None  # the usual case, first: VQAv2 train has ~6M of these
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, (f"`{name}` is missing or empty: fill it in or remove the entry" if required else None)
    if not isinstance(value, str):
        return None, f"`{name}` is {_describe(value)}, not text: write it as a string or remove the entry"
    text = value.strip()
    if len(text) > MAX_TEXT_CHARS:
        return None, f"`{name}` is {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,}: shorten it"
    return text, None


def _is_id(value: object) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _describe(value: object) -> str:
    if value is None:
        return "missing"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:40] + '...'}"
