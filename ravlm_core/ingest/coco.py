"""COCO captions folders: captions_*.json and the images it lists, read as `SourceRecord`s (every caption kept)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ravlm_core.ingest.annotation_files import (
    annotation_file,
    describe,
    image_dirs,
    image_set_of,
    is_id,
    load_json,
    locate,
    require_records,
    source_folder,
    split_for,
    string_field,
)
from ravlm_core.ingest.records import MAX_TEXT_CHARS, BadRow, ManifestError, SourceRecord

log = logging.getLogger(__name__)

COCO_CAPTIONS = "captions_*.json"  # captions_val2017.json, captions_train2014.json


@dataclass
class CocoCaptions:
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
    folder = source_folder(folder)
    annotations = annotation_file(folder, annotations, COCO_CAPTIONS, "COCO captions", "--annotations", split)
    image_set = image_set_of(annotations, COCO_CAPTIONS)
    dirs = image_dirs(image_set, split)
    split = split_for(split, image_set)
    coco = read_coco_captions(annotations)
    records: dict[str, SourceRecord] = {}
    image_bad = dict(coco.image_bad)
    for image_id, (index, ref, file_name, extra) in coco.images.items():
        relpath, reason = locate(folder, [file_name], dirs, f"image {file_name!r}")
        if reason is None and relpath in records:
            reason = f"{relpath} is already listed at {records[relpath].ref}: remove the duplicate entry"
        if reason:
            image_bad[index] = BadRow(ref, reason, relpath)
            continue
        captions = coco.captions.get(image_id, [])
        records[relpath] = SourceRecord(ref, folder / relpath, relpath, split, captions[0] if captions else None,
                                        captions=captions, extra=extra)
    bad = [image_bad[index] for index in sorted(image_bad)]
    require_records(annotations, "images", records, bad)
    bad += coco.caption_bad
    log.info("%s: %d images (%d without a caption), %d bad entries", annotations, len(records),
             sum(r.caption is None for r in records.values()), len(bad))
    return list(records.values()), bad


def read_coco_captions(path: Path) -> CocoCaptions:
    """Check a captions file's entries once: ids, file names and captions, without touching the image folder."""
    data = load_json(path, ("images", "annotations"), "COCO captions", COCO_CAPTIONS)
    annotations = data["annotations"]
    if annotations and not any(isinstance(a, dict) and "caption" in a for a in annotations):
        raise ManifestError(f"COCO captions file {path} has no `caption` in its annotations: it looks like an "
                            f"instances or keypoints file; pass a {COCO_CAPTIONS} file")
    coco = CocoCaptions()
    by_name: dict[str, str] = {}  # file_name -> the ref that lists it
    rejected: set[int] = set()  # ids of unusable image entries: their captions go with them, unreported
    for index, entry in enumerate(data["images"]):
        ref = f"{path.name} images[{index}]"
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        named = isinstance(file_name, str) and file_name.strip()
        relpath = PurePosixPath(file_name.replace("\\", "/")).as_posix() if named else None
        if not isinstance(entry, dict):
            reason = f"is {describe(entry)}, not an object: remove it"
        elif not named:
            reason = f"`file_name` is {describe(file_name)}, not a file name: give the image's path or remove it"
        elif not is_id(image_id):
            reason = f"`id` is {describe(image_id)}, not an integer: give the image its COCO id or remove it"
        elif image_id in coco.images:
            reason = f"id {image_id} is already {coco.images[image_id][1]}: give each image its own id"
        elif relpath in by_name:
            reason = f"file_name {file_name!r} is already {by_name[relpath]}: remove the duplicate entry"
        else:
            by_name[relpath] = ref
            coco.images[image_id] = (index, ref, relpath, _coco_extra(entry))
            continue
        coco.image_bad[index] = BadRow(ref, reason, relpath)
        if is_id(image_id) and image_id not in coco.images:
            rejected.add(image_id)
    keyed: dict[int, list[tuple[tuple[int, int], str]]] = {}  # id -> [(order, caption)]
    for index, entry in enumerate(annotations):
        ref = f"{path.name} annotations[{index}]"
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        if not isinstance(entry, dict):
            coco.caption_bad.append(BadRow(ref, f"is {describe(entry)}, not an object: remove it"))
            continue
        if is_id(image_id) and image_id in rejected:
            continue
        if not is_id(image_id) or image_id not in coco.images:
            problem = (f"image_id {image_id} is not in `images`" if is_id(image_id)
                       else f"`image_id` is {describe(image_id)}, not an image id")
            coco.caption_bad.append(BadRow(ref, f"{problem}: fix the id or remove the caption"))
            continue
        caption, problem = string_field(entry.get("caption"), "caption")
        if problem:
            coco.caption_bad.append(BadRow(ref, problem, coco.images[image_id][2]))
            continue
        annotation_id = entry.get("id")
        order = (0, annotation_id) if is_id(annotation_id) else (1, index)  # by id; entries without one last
        keyed.setdefault(image_id, []).append((order, caption))
    coco.captions = {image_id: [text for _, text in sorted(pairs, key=lambda p: p[0])]
                     for image_id, pairs in keyed.items()}
    return coco


def _coco_extra(entry: dict) -> dict:
    extra = {"coco_id": entry["id"]}
    for key in ("coco_url", "license"):
        value = entry.get(key)
        if is_id(value) or (isinstance(value, str) and 0 < len(value) <= MAX_TEXT_CHARS):
            extra[key] = value
    return extra
