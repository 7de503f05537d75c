"""Build a folder dataset whose test split hides near-duplicates of train images, to test retrieval leakage guards.

    python benchmarks/make_leakage_dataset.py OUT_DIR [--from easy-vqa|FOLDER] [--train 400] [--test 200]
        [--copies 0.5] [--seed 0]

Train images (with all their QA pairs and captions) come from the source's train split. A `--copies` share of
the test images are copies of train images, spread evenly over four kinds: an exact byte copy, a JPEG
re-encode, a one-pixel edit and a resize by up to 10%; the rest are distinct images from the source's test
split. Every test image keeps its original's QA pairs and caption. `leakage.json` beside `manifest.jsonl`
says, per test image, whether it is a copy, of which kind, and of which train file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ravlm_core.errors import UserError
from ravlm_core.ingest.easy_vqa import EASY_VQA
from ravlm_core.ingest.records import SourceRecord
from ravlm_core.ingest.sources import open_source

log = logging.getLogger(__name__)

KINDS = ("exact", "jpeg", "pixel", "resize")
JPEG_QUALITY = (75, 90)
RESIZE_CHANGE = (0.03, 0.10)  # relative size change, either way: visible in the size, small in the pixels
THUMB_SIDE = 16
# A "distinct" test image whose 16x16 thumbnail lies this close to a train image's (mean absolute difference,
# 0-255 scale) is skipped: it could pass for a copy. Our JPEG re-encodes of easy-VQA images reach 1.7 from
# their originals; easy-VQA's closest genuinely different test/train pair is 2.5 apart.
NEAR_DUPLICATE_MAD = 2.0


def make_leakage_dataset(
    out_dir: Path, source: str = EASY_VQA, n_train: int = 400, n_test: int = 200, copies: float = 0.5,
    seed: int = 0,
) -> dict:
    """Write `out_dir/images/`, `out_dir/manifest.jsonl` and `out_dir/leakage.json`.

    Args:
        out_dir: a new or empty folder, or one this function wrote before (its images are replaced).
        source: "easy-vqa" or a folder with a manifest that has train and test splits.
        n_train, n_test: images per split.
        copies: share of the test images that copy a train image.
        seed: the same seed and source give byte-identical output.
    Returns:
        The leakage record (what `leakage.json` holds).
    Raises:
        ValueError: the source has too few train or test images, or `copies` is outside 0..1.
        FileExistsError: `out_dir` holds files this function did not write.
        UserError: the source cannot be read (from `open_source`).
    """
    if not 0 <= copies <= 1:
        raise ValueError(f"--copies {copies} is not a share between 0 and 1")
    records, bad = open_source(source)
    if bad:
        log.warning("%s: skipped %d bad rows", source, len(bad))
    by_split = {split: sorted((r for r in records if r.split == split), key=lambda r: str(r.path))
                for split in ("train", "test")}
    n_copies = round(copies * n_test)
    if n_copies > n_train:
        raise ValueError(f"{n_copies} copies need as many train images, --train is {n_train}")
    for split, wanted in (("train", n_train), ("test", n_test - n_copies)):
        if len(by_split[split]) < wanted:
            raise ValueError(f"{source} has {len(by_split[split])} {split} images, {wanted} are needed: "
                             "lower --train, --test or --copies")
    rng = random.Random(seed)
    train = rng.sample(by_split["train"], n_train)
    copied = rng.sample(range(n_train), n_copies)  # which train images get a copy, each at most once
    distinct, rejected = _pick_distinct(by_split["test"], train, n_test - n_copies, rng)
    plan = [(train[i], KINDS[k % len(KINDS)], i) for k, i in enumerate(copied)] + [(r, None, None) for r in distinct]
    rng.shuffle(plan)  # copies and distinct images interleaved, so file order gives nothing away

    _prepare(out_dir)
    # Where each test image came from, relative to the source (easy-VQA: to its package's data folder).
    root = os.path.commonpath([str(r.path.parent) for r in records]) if source == EASY_VQA else source
    rows, entries = _write_images(out_dir, train, plan, root, rng)
    leakage = {
        "source": source, "seed": seed, "train_images": n_train, "test_images": n_test,
        "copies": {kind: sum(e["kind"] == kind for e in entries) for kind in KINDS},
        "distinct": len(distinct), "near_duplicates_skipped": rejected, "near_duplicate_mad": NEAR_DUPLICATE_MAD,
        "manifest_rows": len(rows), "test": entries,
    }
    with (out_dir / "manifest.jsonl").open("w", encoding="utf-8") as manifest:
        manifest.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (out_dir / "leakage.json").write_text(json.dumps(leakage, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return leakage


def _write_images(
    out_dir: Path, train: list[SourceRecord], plan: list[tuple], root: str, rng: random.Random
) -> tuple[list[dict], list[dict]]:
    """Write the train images and the planned test images; returns the manifest rows and the test entries."""
    rows, train_names, entries = [], [], []
    for index, record in enumerate(train):
        name = f"images/train_{index:05d}{record.path.suffix.lower()}"
        shutil.copyfile(record.path, out_dir / name)
        train_names.append(name)
        rows += _manifest_rows(name, "train", record)
    for index, (record, kind, train_index) in enumerate(plan):
        name, detail = _write_test_image(record.path, out_dir, f"images/test_{index:05d}", kind, rng)
        rows += _manifest_rows(name, "test", record)
        entries.append({"image": name, "copy": kind is not None, "kind": kind,
                        "of": None if train_index is None else train_names[train_index],
                        "source": Path(os.path.relpath(record.path, root)).as_posix(), **detail})
    return rows, entries


def _pick_distinct(
    pool: list[SourceRecord], train: list[SourceRecord], wanted: int, rng: random.Random
) -> tuple[list[SourceRecord], int]:
    """`wanted` test images none of which is a near-duplicate of a train image; also how many were skipped."""
    train_thumbs = np.stack([_thumbnail(r.path) for r in train]) if train else np.zeros((0, 3 * THUMB_SIDE**2))
    picked, rejected = [], 0
    for record in rng.sample(pool, len(pool)):
        if len(picked) == wanted:
            break
        distances = np.abs(train_thumbs - _thumbnail(record.path)).mean(axis=1)  # (n_train,)
        if distances.size and distances.min() < NEAR_DUPLICATE_MAD:
            rejected += 1
            continue
        picked.append(record)
    if len(picked) < wanted:
        raise ValueError(f"only {len(picked)} test images are not near-duplicates of train images, {wanted} needed")
    if rejected:
        log.info("skipped %d test images that are near-duplicates of train images", rejected)
    return picked, rejected


def _thumbnail(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        small = image.convert("RGB").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).reshape(-1)  # (3 * 16 * 16,)


def _write_test_image(src: Path, out_dir: Path, stem: str, kind: str | None, rng: random.Random) -> tuple[str, dict]:
    """Write one test image (a copy of `kind`, or `src` as is when None); returns its name and what was done."""
    if kind in (None, "exact"):
        name = stem + src.suffix.lower()
        shutil.copyfile(src, out_dir / name)
        return name, {}
    with Image.open(src) as original:
        image = original.convert("RGB")
    if kind == "jpeg":
        quality = rng.randint(*JPEG_QUALITY)
        image.save(out_dir / f"{stem}.jpg", quality=quality)
        return f"{stem}.jpg", {"quality": quality}
    if kind == "pixel":
        x, y = rng.randrange(image.width), rng.randrange(image.height)
        old = image.getpixel((x, y))
        new = tuple((channel + 128) % 256 for channel in old)  # every channel moves by 128
        image.putpixel((x, y), new)
        detail = {"pixel": [x, y], "from_rgb": list(old), "to_rgb": list(new)}
    else:  # resize
        factor = 1 + rng.choice((-1, 1)) * rng.uniform(*RESIZE_CHANGE)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        if size == image.size:  # tiny images: make sure the size does change
            size = (image.width + 1, image.height + 1)
        detail = {"from_size": list(image.size), "to_size": list(size)}
        image = image.resize(size, Image.Resampling.LANCZOS)
    image.save(out_dir / f"{stem}.png")  # lossless, so the edit is the only change
    return f"{stem}.png", detail


def _manifest_rows(name: str, split: str, record: SourceRecord) -> list[dict]:
    """One row per QA pair (one row without a question when the image has none); missing values left out."""
    base = {"image": name, "caption": record.caption, "split": split}
    pairs = [{"question": p.question, "answer": p.answer, "question_type": p.question_type} for p in record.qa]
    return [{k: v for k, v in {**base, **pair}.items() if v is not None} for pair in pairs or [{}]]


def _prepare(out_dir: Path) -> None:
    """Create `out_dir`, or empty the images of an earlier run; never touch a folder of someone else's files."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "leakage.json").is_file():
        raise FileExistsError(f"{out_dir} is not empty and holds no leakage.json: pick a new or empty folder")
    shutil.rmtree(out_dir / "images", ignore_errors=True)
    (out_dir / "images").mkdir(parents=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--from", dest="source", default=EASY_VQA, help="easy-vqa or a folder with a manifest")
    parser.add_argument("--train", type=int, default=400, help="train images")
    parser.add_argument("--test", type=int, default=200, help="test images")
    parser.add_argument("--copies", type=float, default=0.5, help="share of test images that copy a train image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        leakage = make_leakage_dataset(args.out_dir, args.source, args.train, args.test, args.copies, args.seed)
    except (UserError, ValueError, FileExistsError) as err:
        parser.exit(2, f"error: {err}\n")
    kinds = ", ".join(f"{n} {kind}" for kind, n in leakage["copies"].items())
    print(f"{args.out_dir}: {leakage['train_images']} train + {leakage['test_images']} test images "
          f"({sum(leakage['copies'].values())} copies: {kinds}; {leakage['distinct']} distinct), "
          f"{leakage['manifest_rows']} manifest rows")


if __name__ == "__main__":
    main()
