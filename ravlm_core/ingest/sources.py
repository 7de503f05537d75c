"""Image sources: easy-VQA, or a folder (with a manifest, COCO or VQAv2 files, or none) read as `SourceRecord`s."""
from __future__ import annotations

from pathlib import Path

from ravlm_core.errors import UserError
from ravlm_core.ingest.coco import open_coco
from ravlm_core.ingest.easy_vqa import EASY_VQA, open_easy_vqa
from ravlm_core.ingest.manifests import MANIFEST_NAMES, find_manifest, open_manifest, open_plain_folder
from ravlm_core.ingest.records import BadRow, ManifestError, SourceRecord
from ravlm_core.ingest.vqav2 import open_vqav2

FORMATS = ("auto", "manifest", "folder", "coco", "vqav2")


def open_source(source: str, manifest: Path | None = None, *, source_format: str = "auto", annotations: Path | None = None,
                questions: Path | None = None) -> tuple[list[SourceRecord], list[BadRow]]:
    """Read a source's records without touching image bytes.

    Args:
        source: "easy-vqa", or a folder of images.
        manifest: an explicit manifest file for a folder source ("auto" and "manifest" formats).
        source_format: how to read the folder: "auto" (a manifest.jsonl/.csv/.parquet if there is one, else every image),
            "manifest" (one is required), "folder" (every image, manifests ignored), "coco" (COCO captions JSON)
            or "vqav2" (VQAv2 questions and annotations JSON); see `ingest/coco.py` and `ingest/vqav2.py`.
        annotations: "coco": the captions_*.json file; "vqav2": the v2_mscoco_*_annotations.json file.
        questions: "vqav2": the v2_OpenEnded_mscoco_*_questions.json file.
    Returns:
        The usable records (one per image path) and the rows that had to be skipped.
    Raises:
        UserError: an unknown format, an option the format does not take, or a folder or file that does not exist.
        ManifestError: the manifest or annotation files are unreadable, ambiguous, empty or of the wrong shape.
    """
    if source_format not in FORMATS:
        raise UserError(f"unknown source format {source_format!r}: choose one of {', '.join(FORMATS)}")
    _check_format_options(source_format, manifest, annotations, questions)
    if source == EASY_VQA:
        if source_format != "auto":
            raise UserError(f"{EASY_VQA!r} is the built-in dataset: --source-format {source_format} needs a folder "
                            f"(write ./{EASY_VQA} for a folder of that name)")
        return open_easy_vqa(), []
    folder = Path(source).absolute()
    if not folder.is_dir():
        raise UserError(f"source {source!r} is neither {EASY_VQA!r} nor an existing folder")
    if source_format in ("coco", "vqav2"):
        if source_format == "coco":
            return open_coco(folder, annotations)
        return open_vqav2(folder, questions, annotations)
    if source_format == "folder":
        return open_plain_folder(folder)
    if manifest is None:
        manifest = find_manifest(folder)
    elif not manifest.is_file():
        raise UserError(f"manifest {manifest} does not exist")
    if manifest is None:
        if source_format == "manifest":
            raise ManifestError(f"{folder} has no manifest ({', '.join(MANIFEST_NAMES)}): add one, pass --manifest "
                                "or use --source-format folder")
        return open_plain_folder(folder)
    return open_manifest(folder, manifest)


def _check_format_options(source_format: str, manifest: Path | None, annotations: Path | None, questions: Path | None) -> None:
    """Options a format would ignore are mistakes: say so instead of reading the source another way."""
    takes = {"--manifest": ("auto", "manifest"), "--annotations": ("coco", "vqav2"), "--questions": ("vqav2",)}
    for option, value in (("--manifest", manifest), ("--annotations", annotations), ("--questions", questions)):
        if value is not None and source_format not in takes[option]:
            allowed = " or ".join(takes[option])
            raise UserError(f"{option} goes with --source-format {allowed}, not {source_format}: drop it or change the format")
