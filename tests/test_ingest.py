"""Tests for ravlm_core.ingest: scan → write_shard → load_shard into a throwaway LanceDB store."""
from __future__ import annotations

import hashlib
import io
import shutil
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.make_shapes_dataset import make_shapes_dataset
from ravlm_core import ingest
from ravlm_core.store import IMAGES, QA, Store

N_TRAIN, N_TEST = 6, 4


@pytest.fixture
def source(tmp_path) -> Path:
    """10 shapes images + a byte-identical copy with extra QA + a truncated PNG + random bytes named .png."""
    folder = tmp_path / "src"
    manifest = make_shapes_dataset(folder, n_train=N_TRAIN, n_test=N_TEST, seed=0)
    rows = pd.read_csv(manifest)
    original = rows.image[0]
    shutil.copy(folder / original, folder / "images/copy.png")
    first_qa = rows.iloc[0]
    big = Image.effect_noise((128, 128), 60).convert("RGB")  # noisy, so its PNG has a long pixel stream to cut
    big.save(folder / "images/whole.png")
    data = (folder / "images/whole.png").read_bytes()
    (folder / "images/truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "images/whole.png").unlink()
    (folder / "images/random.png").write_bytes(bytes(range(256)) * 4)
    extra = pd.DataFrame(
        [
            {"image": "images/copy.png", "question": "Is this a copy?", "answer": "yes", "split": first_qa.split},
            # Exactly the original's first QA pair again: must not be stored twice.
            {"image": "images/copy.png", "question": first_qa.question, "answer": first_qa.answer,
             "split": first_qa.split, "question_type": first_qa.question_type},
            {"image": "images/truncated.png", "question": "q", "answer": "a", "split": "test"},
            {"image": "images/random.png", "question": "q", "answer": "a", "split": "test"},
        ]
    )
    pd.concat([rows, extra]).to_csv(manifest, index=False)
    return folder


def _scan(source: Path, tmp_path: Path, store: Store, shard_size: int = 4) -> ingest.ScanResult:
    known = store.existing_ids(IMAGES, "image_id")
    return ingest.scan_source(str(source), "shapes", tmp_path / "staging", known, shard_size)


def _write_all(scan: ingest.ScanResult, tmp_path: Path, dataset: str = "shapes") -> list[ingest.ShardResult]:
    return [ingest.write_shard(scan.records_path, shard, dataset, tmp_path / "parquet") for shard in scan.shards]


def _write_and_load_all(scan: ingest.ScanResult, tmp_path: Path, store: Store) -> list[ingest.ShardResult]:
    written = _write_all(scan, tmp_path)
    for result in written:
        if result.path:  # "" when every image of the shard was rejected
            ingest.load_shard(store, result.path)
    return written


def _remove_broken(source: Path) -> None:
    (source / "images/truncated.png").unlink()
    (source / "images/random.png").unlink()


def _files(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def test_end_to_end_fills_tables_and_reports_bad_images(source, tmp_path):
    store = Store(str(tmp_path / "db"))
    manifest = pd.read_csv(source / "manifest.csv")
    scan = _scan(source, tmp_path, store)
    assert scan.n_images == N_TRAIN + N_TEST + 2  # the copy merges into its original; the two broken files hash fine
    assert scan.n_new == scan.n_images
    assert pq.read_schema(scan.records_path).names == ["image_id", "path", "ref", "split", "caption", "qa", "shard"]
    written = _write_all(scan, tmp_path)
    bad = [b for w in written for b in w.bad_rows]
    assert sorted(b.ref for b in bad) == [f"manifest.csv row {len(manifest) - 1}", f"manifest.csv row {len(manifest)}"]
    reasons = " ".join(b.reason for b in bad)
    assert "truncated.png" in reasons and "random.png" in reasons and "fix or remove the file" in reasons
    loaded = [ingest.load_shard(store, w.path) for w in written]

    shapes_qa = manifest[manifest.image.str.startswith("images/train_") | manifest.image.str.startswith("images/test_")]
    assert store.count(IMAGES) == N_TRAIN + N_TEST == sum(r.new_images for r in loaded)
    assert store.count(QA) == len(shapes_qa) + 1 == sum(r.new_qa for r in loaded)  # +1: the copy's new question
    images = store.read(IMAGES).to_pandas()
    assert set(images.split) == {"train", "test"}
    assert (images.width == 64).all() and (images.format == "PNG").all()
    assert images.caption.str.startswith("a drawing of a ").all()
    assert set(images.shard) == {w.path for w in written if w.n_images}
    with Image.open(io.BytesIO(images.thumbnail[0])) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 128
    assert ingest.shard_paths(tmp_path / "parquet", "shapes") == sorted(w.path for w in written)


def test_shards_hold_original_bytes_and_respect_size_and_split(source, tmp_path):
    _remove_broken(source)
    scan = _scan(source, tmp_path, Store(str(tmp_path / "db")), shard_size=3)
    for result in _write_all(scan, tmp_path):
        table = pq.read_table(result.path).to_pandas()
        assert len(table) <= 3 and table.split.nunique() <= 1
        assert Path(result.path).name.startswith(f"{table.split.iloc[0]}-")
        for row in table.itertuples():
            assert hashlib.blake2b(row.image, digest_size=16).hexdigest() == row.image_id
            assert Path(row.uri).read_bytes() == row.image


def test_duplicate_bytes_are_stored_once_with_merged_qa(source, tmp_path):
    store = Store(str(tmp_path / "db"))
    scan = _scan(source, tmp_path, store)
    for written in _write_all(scan, tmp_path):
        ingest.load_shard(store, written.path)
    original = source / pd.read_csv(source / "manifest.csv").image[0]
    image_id = ingest.image_id_of(original)
    assert image_id == ingest.image_id_of(source / "images/copy.png")
    images = store.read(IMAGES).to_pandas()
    assert (images.image_id == image_id).sum() == 1
    questions = store.read(QA).to_pandas().query("image_id == @image_id").question.tolist()
    assert "Is this a copy?" in questions
    assert len(questions) == len(set(questions))


def test_rerun_with_known_ids_plans_and_writes_nothing(source, tmp_path):
    _remove_broken(source)
    store = Store(str(tmp_path / "db"))
    _write_and_load_all(_scan(source, tmp_path, store), tmp_path, store)
    before = _files(tmp_path / "staging") | _files(tmp_path / "parquet")
    rerun = _scan(source, tmp_path, store)
    assert (rerun.shards, rerun.n_new, rerun.n_qa, rerun.records_path) == ([], 0, 0, "")
    assert rerun.n_images == N_TRAIN + N_TEST
    assert _files(tmp_path / "staging") | _files(tmp_path / "parquet") == before


def test_rerun_plans_only_the_images_still_missing(source, tmp_path):
    # Rejected images never reach the store, so each rerun retries (and reports) just them.
    store = Store(str(tmp_path / "db"))
    _write_and_load_all(_scan(source, tmp_path, store), tmp_path, store)
    rerun = _scan(source, tmp_path, store)
    assert rerun.n_new == 2 and len(rerun.shards) == 1
    [result] = _write_all(rerun, tmp_path)
    assert (result.path, result.n_images, len(result.bad_rows)) == ("", 0, 2)  # and no empty shard written


def test_writing_and_loading_a_shard_twice_adds_nothing(source, tmp_path):
    store = Store(str(tmp_path / "db"))
    scan = _scan(source, tmp_path, store)
    shard = scan.shards[0]
    first = ingest.write_shard(scan.records_path, shard, "shapes", tmp_path / "parquet")
    content = Path(first.path).read_bytes()
    loaded = ingest.load_shard(store, first.path)
    assert loaded.new_images == first.n_images > 0 and loaded.new_qa == first.n_qa > 0
    again = ingest.write_shard(scan.records_path, shard, "shapes", tmp_path / "parquet")
    assert again.path == first.path and Path(again.path).read_bytes() == content
    assert ingest.load_shard(store, again.path) == ingest.LoadResult(first.path, 0, 0)
    assert store.count(IMAGES) == first.n_images and store.count(QA) == first.n_qa
    assert [p.name for p in (tmp_path / "parquet" / "shapes").iterdir()] == [Path(first.path).name]


def test_crash_between_write_and_load_then_rerun_loads_exactly_once(source, tmp_path):
    _remove_broken(source)
    store = Store(str(tmp_path / "db"))
    scan = _scan(source, tmp_path, store, shard_size=2)
    written = _write_all(scan, tmp_path)
    assert len(written) >= 3
    loaded_first = ingest.load_shard(store, written[1].path)  # the "crash": only one shard got loaded
    rerun = _scan(source, tmp_path, store, shard_size=2)
    unloaded = [Path(w.path).stem for i, w in enumerate(written) if i != 1]
    assert rerun.shards == sorted(unloaded)
    rewritten = _write_all(rerun, tmp_path)
    assert {w.path for w in rewritten} == {w.path for i, w in enumerate(written) if i != 1}
    loaded_rest = [ingest.load_shard(store, w.path) for w in rewritten]
    total = loaded_first.new_images + sum(r.new_images for r in loaded_rest)
    assert total == store.count(IMAGES) == N_TRAIN + N_TEST
    assert loaded_first.new_qa + sum(r.new_qa for r in loaded_rest) == store.count(QA)
    assert len(ingest.shard_paths(tmp_path / "parquet", "shapes")) == len(written)


def test_empty_file_truncated_jpeg_and_bad_dataset_name(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.effect_noise((96, 96), 60).convert("RGB").save(jpeg, format="JPEG")
    (folder / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    Image.new("RGB", (5, 3), "green").save(folder / "ok.bmp")
    scan = ingest.scan_source(str(folder), "plain", tmp_path / "staging", set(), 10)
    [result] = _write_all(scan, tmp_path, "plain")
    assert result.n_images == 1
    reasons = {Path(b.ref).name: b.reason for b in result.bad_rows}
    assert set(reasons) == {"empty.png", "cut.jpg"}
    assert "empty (0 bytes)" in reasons["empty.png"] and "truncated" in reasons["cut.jpg"]
    row = pq.read_table(result.path).to_pylist()[0]
    assert (row["width"], row["height"], row["format"], row["split"]) == (5, 3, "BMP", "test")
    with pytest.raises(ValueError, match="dataset name"):
        ingest.scan_source(str(folder), "../up", tmp_path / "staging", set(), 10)


def test_a_shard_whose_images_all_fail_is_not_written(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    scan = ingest.scan_source(str(folder), "plain", tmp_path / "staging", set(), 10)
    [result] = _write_all(scan, tmp_path, "plain")
    assert (result.path, result.n_images, len(result.bad_rows)) == ("", 0, 1)
    assert not list((tmp_path / "parquet").rglob("*.parquet"))


@pytest.mark.slow
def test_full_easy_vqa_ingest(tmp_path):
    store = Store(str(tmp_path / "db"))
    started = time.perf_counter()
    scan = ingest.scan_source("easy-vqa", "easy-vqa", tmp_path / "staging", set(), 1000)
    written = [ingest.write_shard(scan.records_path, s, "easy-vqa", tmp_path / "parquet") for s in scan.shards]
    loaded = [ingest.load_shard(store, w.path) for w in written]
    elapsed = time.perf_counter() - started
    assert sum(r.new_images for r in loaded) == store.count(IMAGES) == 5000
    assert sum(r.new_qa for r in loaded) == store.count(QA)
    assert all(not w.bad_rows for w in written)
    print(f"easy-vqa ingest: {elapsed:.1f} s")  # noqa: T201 - a benchmark number for `pytest -s -m slow`
