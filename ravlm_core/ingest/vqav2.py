"""VQAv2 folders: the official questions and annotations JSON (every human answer kept) over COCO images."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ravlm_core.ingest.annotation_files import (
    IMAGE_SET,
    annotation_file,
    describe,
    existing_file,
    glob_in,
    image_dirs,
    image_set_of,
    is_id,
    load_json,
    locate,
    require_records,
    search_dirs,
    source_folder,
    split_for,
    string_field,
)
from ravlm_core.ingest.coco import CocoCaptions, read_coco_captions
from ravlm_core.ingest.records import BadRow, ManifestError, QAPair, SourceRecord

log = logging.getLogger(__name__)

VQA_QUESTIONS = "v2_OpenEnded_mscoco_*_questions.json"  # v2_OpenEnded_mscoco_val2014_questions.json
VQA_ANNOTATIONS = "v2_mscoco_*_annotations.json"  # v2_mscoco_val2014_annotations.json


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
    folder = source_folder(folder)
    split_for(split, None)  # a bad explicit split fails before any big file is read
    questions = annotation_file(folder, questions, VQA_QUESTIONS, "VQAv2 questions", "--questions", split)
    image_set = image_set_of(questions, VQA_QUESTIONS)
    annotations = _vqa_annotations(folder, questions, annotations, image_set)
    question_file = load_json(questions, ("questions",), "VQAv2 questions", VQA_QUESTIONS)
    asked = question_file["questions"]
    subtype = question_file.get("data_subtype")  # VQAv2's own name of the set: for renamed files
    image_set = image_set or (subtype if isinstance(subtype, str) and IMAGE_SET.fullmatch(subtype) else None)
    answered = load_json(annotations, ("annotations",), "VQAv2 annotations", VQA_ANNOTATIONS)["annotations"]
    coco = _vqa_captions(folder, questions, captions, image_set)
    dirs = image_dirs(image_set, split)
    split = split_for(split, image_set)

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
            reason = f"is {describe(entry)}, not an object: remove it"
        elif not is_id(image_id):
            reason = f"`image_id` is {describe(image_id)}, not a COCO image id: fix it or remove the question"
        else:
            relpath, reason = images.find(image_id)
            question_id = entry.get("question_id")
            position = by_question_id.get(question_id) if is_id(question_id) else None
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
    require_records(questions, "questions", records, bad)
    if coco:
        bad += [coco.image_bad[index] for index in sorted(coco.image_bad)] + coco.caption_bad
    log.info("%s: %d images, %d questions, %d bad entries", questions, len(records),
             sum(len(r.qa) for r in records.values()), len(bad))
    return list(records.values()), bad


def _vqa_annotations(folder: Path, questions: Path, given: Path | None, image_set: str | None) -> Path:
    """The annotations of the questions' image set; their absence is an error that says where to go instead."""
    if given is not None:
        return existing_file(given, "VQAv2 annotations", "--annotations")
    name = VQA_ANNOTATIONS.replace("*", image_set) if image_set else VQA_ANNOTATIONS
    found = glob_in(search_dirs(folder, questions), name)
    if len(found) == 1:
        return found[0]
    if found:
        raise ManifestError(f"several VQAv2 annotations files ({', '.join(map(str, found))}): pass one with "
                            "--annotations")
    raise ManifestError(
        f"no VQAv2 annotations ({name}) for {questions.name} in {folder}, {folder / 'annotations'} or "
        f"{questions.parent}: pass them with --annotations. Questions without annotations (test-dev) are not a "
        "labeled source: ingest their images with --source-format coco or as a plain folder and ask with "
        "`ravlm vqa --questions FILE` (one question per line)")


def _vqa_captions(folder: Path, questions: Path, given: Path | None, image_set: str | None) -> CocoCaptions | None:
    """The optional COCO captions of the same images: the given file, or the one named for the image set."""
    if given is not None:
        path = existing_file(given, "COCO captions", "captions")
    else:
        found = glob_in(search_dirs(folder, questions), f"captions_{image_set}.json") if image_set else []
        if len(found) != 1:
            return None
        path = found[0]
    log.info("%s: captions and file names from %s", questions, path)
    return read_coco_captions(path)


def _index_annotations(annotations: list, name: str) -> tuple[dict[int, int], list[BadRow]]:
    """question_id -> position in `annotations` (not copied: the train file holds 4.4M answers)."""
    positions: dict[int, int] = {}
    bad = []
    for index, entry in enumerate(annotations):
        question_id = entry.get("question_id") if isinstance(entry, dict) else None
        if is_id(question_id) and question_id not in positions:
            positions[question_id] = index
            continue
        problem = (f"question_id {question_id} is already annotations[{positions[question_id]}]"
                   if is_id(question_id) else f"`question_id` is {describe(question_id)}, not an integer")
        bad.append(BadRow(f"{name} annotations[{index}]", f"{problem}: remove the entry"))
    return positions, bad


@dataclass
class _VqaImages:
    """Finds the image of a COCO id once: by the captions file's `file_name`, else by COCO's naming."""
    folder: Path
    dirs: list[str]
    image_set: str | None
    coco: CocoCaptions | None
    located: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # id -> (relpath, why unreadable)
    owner: dict[str, int] = field(default_factory=dict)  # relpath -> the id it was found for

    def find(self, image_id: int) -> tuple[str, str | None]:
        if image_id not in self.located:
            names = [self.coco.images[image_id][2]] if self.coco and image_id in self.coco.images else []
            if self.image_set:
                names.append(f"COCO_{self.image_set}_{image_id:012d}.jpg")  # the 2014 names VQAv2 came with
            names.append(f"{image_id:012d}.jpg")  # COCO 2017's names
            names = list(dict.fromkeys(names))
            relpath, reason = locate(self.folder, names, self.dirs, f"image_id {image_id} ({' or '.join(names)})")
            if reason is None and self.owner.setdefault(relpath, image_id) != image_id:
                reason = f"image_id {image_id} names {relpath}, the image of id {self.owner[relpath]}: fix the ids"
            self.located[image_id] = relpath, reason
        return self.located[image_id]


def _question_problem(question_id: object, position: int | None, seen: dict[int, str], name: str) -> str | None:
    """Why a question cannot be matched to its answers, if it cannot."""
    if not is_id(question_id):
        return f"`question_id` is {describe(question_id)}, not an integer: fix it or remove the question"
    if question_id in seen:
        return f"question_id {question_id} is already {seen[question_id]}: remove the duplicate"
    if position is None:
        return (f"question_id {question_id} has no answers in {name}: pass the annotations of the same split or "
                "remove the question")
    return None


def _qa_pair(entry: dict, annotation: dict, ref: str) -> tuple[QAPair | None, str | None]:
    """A question with its annotation, or why they cannot make one (`ref` names the annotation)."""
    question, problem = string_field(entry.get("question"), "question")
    if problem:
        return None, problem
    if annotation.get("image_id") != entry["image_id"]:
        return None, (f"{ref} is about image_id {annotation.get('image_id')!r}, not {entry['image_id']}: "
                      "pass questions and annotations of the same release")
    answer, problem = string_field(annotation.get("multiple_choice_answer"), "multiple_choice_answer")
    question_type, type_problem = string_field(annotation.get("question_type"), "question_type", required=False)
    answers, answers_problem = _human_answers(annotation.get("answers"))
    problem = problem or type_problem or answers_problem
    if problem:
        return None, f"{ref}: {problem}"
    return QAPair(question, answer, question_type, answers), None


def _human_answers(value: object) -> tuple[tuple[str, ...], str | None]:
    """VQAv2's `answers` ([{answer, answer_confidence, answer_id}]; plain strings too) in answer_id order."""
    if not isinstance(value, list):
        return (), f"`answers` is {describe(value)}, not a list of answers: fix the annotation or remove it"
    keyed = []  # (0, answer_id, text), or (1, position, text) without an id: those go last, in file order
    for position, item in enumerate(value):
        text, answer_id = (item.get("answer"), item.get("answer_id")) if type(item) is dict else (item, None)
        text, problem = string_field(text, f"answers[{position}]", required=False)
        if problem:
            return (), problem
        if text is not None:
            keyed.append((0, answer_id, text) if is_id(answer_id) else (1, position, text))
    keyed.sort()
    return tuple(text for _, _, text in keyed), None


def _vqa_record(folder: Path, relpath: str, image_id: int, split: str, coco: CocoCaptions | None) -> SourceRecord:
    if coco and image_id in coco.images:
        _, ref, _, extra = coco.images[image_id]
        captions = coco.captions.get(image_id, [])
    else:
        ref, extra, captions = str(folder / relpath), {"coco_id": image_id}, []
    return SourceRecord(ref, folder / relpath, relpath, split, captions[0] if captions else None,
                        captions=list(captions), extra=dict(extra))
