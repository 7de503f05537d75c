"""Every id the store keys rows by, in one place: each is a digest of what the row is, so the same input gives
the same id on any machine and a rerun upserts rows instead of duplicating them."""
from __future__ import annotations

import hashlib
from pathlib import Path


def content_id(data: bytes) -> str:
    """`image_id`: the hash of an image's bytes, so identical bytes under any name are one `contents` row."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def image_id_of(path: Path) -> str:
    """`content_id` of a file, read in chunks."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def member_id_of(dataset: str, relpath: str) -> str:
    """`member_id`: one listing, a dataset's path (its bytes may change; the listing stays)."""
    return hashlib.blake2b(f"{dataset}\x1f{relpath}".encode(), digest_size=16).hexdigest()


def qa_id_of(member_id: str, image_id: str, question: str, answer: str | None, question_type: str | None) -> str:
    """`qa_id`: one QA pair of one listing; new bytes or a new annotation make a new pair (and new predictions)."""
    key = "\x1f".join((member_id, image_id, question, answer or "", question_type or ""))
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).hexdigest()


def text_id(text: str) -> str:
    """`text_id`: texts are keyed by content, so a question asked of 300 images is embedded once."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def shard_name(image_ids: list[str]) -> str:
    """A content shard's name: it depends only on the set of content ids it holds."""
    return "images-" + hashlib.blake2b("\n".join(sorted(image_ids)).encode()).hexdigest()[:12]


def job_id(kind: str, dataset: str, split: str, variant: str, *parts: str) -> str:
    """A job's id is derived from what it computes, so rerunning the same job upserts the same rows."""
    digest = hashlib.blake2b("\x1f".join((kind, dataset, split, variant, *parts)).encode(), digest_size=8)
    return f"{kind}-{digest.hexdigest()}"


def pred_ids(job: str, keys: list[str]) -> list[str]:
    """`pred_id`s: one per (job, item), so a rerun of the job upserts the same rows."""
    return [hashlib.blake2b(f"{job}\x1f{key}".encode(), digest_size=16).hexdigest() for key in keys]
