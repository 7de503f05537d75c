"""Ingest keeps the store true to the source: memberships, diffs (added / changed / re-annotated / removed),
content stored once, every table (images, qa, contents, vectors, predictions) following the source."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ravlm_core.embed import shards as embed
from ravlm_core.errors import UserError
from ravlm_core.ingest import scan as ingest
from ravlm_core.ingest.shards import content_shards, load_shard, stored_shards, write_shard
from ravlm_core.schemas import CONTENTS, IMAGES, QA, VQA_PREDICTIONS, image_vectors_table, predictions_schema
from ravlm_core.store import Store
from tests.helpers.encoders import CountingEncoder
from tests.helpers.shapes import make_shapes_dataset
from tests.helpers.stores import IngestSummary, damage_an_image, ingest_folder

N_TRAIN, N_TEST = 6, 4


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "src"
    make_shapes_dataset(folder, n_train=N_TRAIN, n_test=N_TEST, seed=0)
    return folder


def _manifest(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)


def _ingest(folder: Path, store: Store, tmp_path: Path, dataset: str = "shapes", **options) -> IngestSummary:
    return ingest_folder(folder, dataset, store, tmp_path / "data", shard_size=4, **options)


def _rows(store: Store, table: str, *columns: str) -> list[tuple]:
    data = store.read(table, columns=list(columns))
    return sorted(zip(*(data.column(c).to_pylist() for c in columns))) if data.num_rows else []


def _embed(store: Store, tmp_path: Path, encoder: CountingEncoder) -> None:
    for shard in content_shards(tmp_path / "data" / "parquet"):
        embed.embed_shard(store, encoder, shard)


def _add_prediction(store: Store, member_id: str, image_id: str) -> None:
    schema = predictions_schema([("qa_id", pa.string())])
    row = {name: None for name in schema.names} | {"pred_id": f"p-{member_id}", "job_id": "j", "member_id": member_id,
                                                    "image_id": image_id}
    store.upsert(VQA_PREDICTIONS, pa.Table.from_pylist([row], schema), "pred_id")


def test_first_ingest_fills_every_table_and_a_rerun_changes_nothing(source, tmp_path, store):
    first = _ingest(source, store, tmp_path)
    assert (first.added, first.new_content, first.bad_rows) == (N_TRAIN + N_TEST, N_TRAIN + N_TEST, [])
    manifest = _manifest(source)
    assert store.count(IMAGES) == store.count(CONTENTS) == N_TRAIN + N_TEST
    assert store.count(QA) == len(manifest.drop_duplicates(["image", "question", "answer"]))
    assert {r[0] for r in _rows(store, IMAGES, "path")} == set(manifest.image)
    versions = {t: store.table(t).version for t in (IMAGES, QA, CONTENTS)}
    again = _ingest(source, store, tmp_path)
    assert (again.added, again.changed, again.reannotated, again.removed, again.unchanged) == (0, 0, 0, 0, 10)
    assert {t: store.table(t).version for t in versions} == versions  # not even an empty commit


def test_a_manifest_without_optional_columns_ingests(tmp_path, store):
    folder = tmp_path / "bare"
    folder.mkdir()
    for n in range(3):
        Image.new("RGB", (8, 8), (n * 80, 0, 0)).save(folder / f"{n}.png")
    (folder / "manifest.csv").write_text("image\n0.png\n1.png\n2.png\n")
    result = _ingest(folder, store, tmp_path, "bare")
    assert result.added == 3 and store.count(QA) == 0
    assert {r[0] for r in _rows(store, IMAGES, "split")} == {"test"}


def test_the_same_bytes_in_train_and_test_keep_both_listings_and_their_own_qa(source, tmp_path, store):
    manifest = _manifest(source)
    train_image = manifest[manifest.split == "train"].image.iloc[0]
    shutil.copy(source / train_image, source / "images/copy_in_test.png")
    extra = pd.DataFrame([{"image": "images/copy_in_test.png", "question": "is this the test copy?", "answer": "yes",
                           "split": "test", "caption": "", "question_type": ""}])
    pd.concat([manifest, extra]).to_csv(source / "manifest.csv", index=False)
    _ingest(source, store, tmp_path)
    listings = {path: (image_id, split) for path, image_id, split in _rows(store, IMAGES, "path", "image_id", "split")}
    assert listings[train_image][0] == listings["images/copy_in_test.png"][0]  # one content ...
    assert (listings[train_image][1], listings["images/copy_in_test.png"][1]) == ("train", "test")  # ... two splits
    assert store.count(CONTENTS) == N_TRAIN + N_TEST
    test_only = store.read(QA, where="question = 'is this the test copy?'").to_pylist()
    assert [q["split"] for q in test_only] == ["test"]  # its test-only QA never joins the knowledge base
    encoder = CountingEncoder()
    _embed(store, tmp_path, encoder)
    labels = dict(_rows(store, image_vectors_table(encoder.tag), "image_id", "memberships"))
    assert labels[listings[train_image][0]] == ["shapes:test", "shapes:train"]


def test_a_second_dataset_sharing_images_loses_nothing(source, tmp_path, store):
    _ingest(source, store, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(source, other)
    manifest = _manifest(other)
    manifest["split"] = "train"
    manifest.to_csv(other / "manifest.csv", index=False)
    result = _ingest(other, store, tmp_path, "other")
    assert (result.added, result.new_content) == (N_TRAIN + N_TEST, 0)  # no byte is stored twice
    assert store.count(IMAGES, "dataset = 'shapes'") == store.count(IMAGES, "dataset = 'other'") == 10
    assert store.count(IMAGES, "dataset = 'shapes' AND split = 'train'") == N_TRAIN
    assert store.count(QA, "dataset = 'other'") == store.count(QA, "dataset = 'shapes'")


def test_change_remove_reannotate_add_lands_exactly_in_every_table(source, tmp_path, store):
    _ingest(source, store, tmp_path)
    encoder = CountingEncoder()
    _embed(store, tmp_path, encoder)
    before = {t: _rows(store, t, *key) for t, key in
              ((IMAGES, ("member_id", "image_id", "split", "caption")), (QA, ("qa_id",)))}
    by_path = {p: (m, i) for p, m, i in _rows(store, IMAGES, "path", "member_id", "image_id")}
    for member_id, image_id in by_path.values():
        _add_prediction(store, member_id, image_id)

    manifest = _manifest(source)
    paths = sorted(manifest.image.unique())
    changed, removed, reannotated = paths[0], paths[1:3], paths[3:6]
    Image.new("RGB", (40, 40), (1, 2, 3)).save(source / changed)  # new bytes at a known path
    manifest = manifest[~manifest.image.isin(removed)]
    manifest.loc[manifest.image == reannotated[0], "split"] = "test" if manifest[manifest.image == reannotated[0]].split.iloc[0] == "train" else "train"
    manifest.loc[manifest.image == reannotated[1], "caption"] = "a freshly written caption"
    first_qa = manifest.index[manifest.image == reannotated[2]][0]
    manifest.loc[first_qa, "answer"] = "a corrected answer"
    added = make_shapes_dataset(tmp_path / "more", n_train=10, n_test=0, seed=7)
    more = pd.read_csv(added, dtype=str, keep_default_na=False)
    for name in more.image.unique():
        (source / "new").mkdir(exist_ok=True)
        shutil.copy(tmp_path / "more" / name, source / "new" / Path(name).name)
    more["image"] = "new/" + more.image.map(lambda p: Path(p).name)
    pd.concat([manifest, more]).to_csv(source / "manifest.csv", index=False)

    dry = _ingest(source, store, tmp_path, dry_run=True)
    assert (dry.added, dry.changed, dry.removed, dry.reannotated) == (10, 1, 2, 3)
    assert _rows(store, IMAGES, "member_id", "image_id", "split", "caption") == before[IMAGES]  # nothing written

    result = _ingest(source, store, tmp_path)
    assert (result.added, result.changed, result.removed, result.reannotated, result.unchanged) == (10, 1, 2, 3, 4)
    after = {p: row for p, *row in _rows(store, IMAGES, "path", "member_id", "image_id", "split", "caption")}
    assert set(after) == (set(paths) - set(removed)) | set(more.image)
    assert after[changed][1] != by_path[changed][1]  # the new bytes' content id
    touched = {by_path[p][0] for p in [changed, *removed, *reannotated]}
    kept_predictions = {r[0] for r in _rows(store, VQA_PREDICTIONS, "member_id")}
    assert kept_predictions == {m for m, _ in by_path.values()} - touched  # recomputed by the next jobs
    assert store.count(QA, "answer = 'a corrected answer'") == 1
    assert not store.count(QA, f"member_id IN ('{by_path[removed[0]][0]}', '{by_path[removed[1]][0]}')")
    # Vectors: the removed and replaced contents are gone, the new ones are embedded next, labels follow splits.
    vectors = dict(_rows(store, image_vectors_table(encoder.tag), "image_id", "memberships"))
    gone = {by_path[p][1] for p in [changed, *removed]}
    assert not gone & set(vectors)
    assert store.count(CONTENTS) == 10 - 3 + 11 and not store.existing_ids(CONTENTS, "image_id", gone)
    moved = after[reannotated[0]]
    assert vectors[moved[1]] == [f"shapes:{moved[2]}"]
    encoder.images = 0
    _embed(store, tmp_path, encoder)
    assert encoder.images == 11  # the 10 added and the changed one, nothing else
    assert _ingest(source, store, tmp_path).unchanged == 18


def test_keep_removed_marks_rows_and_a_listing_that_returns_is_active_again(source, tmp_path, store):
    _ingest(source, store, tmp_path)
    full = _manifest(source)
    gone = sorted(full.image.unique())[0]
    full[full.image != gone].to_csv(source / "manifest.csv", index=False)
    assert _ingest(source, store, tmp_path, keep_removed=True).removed == 1
    assert store.count(IMAGES) == 10 and store.count(IMAGES, "removed_at IS NULL") == 9
    assert store.count(QA, "removed_at IS NOT NULL") == len(full[full.image == gone])
    full.to_csv(source / "manifest.csv", index=False)
    back = _ingest(source, store, tmp_path)
    assert back.added == 1 and store.count(IMAGES, "removed_at IS NULL") == 10


def test_a_broken_row_or_unreadable_file_is_reported_not_removed(source, tmp_path, store):
    _ingest(source, store, tmp_path)
    manifest = _manifest(source)
    victim = sorted(manifest.image.unique())[0]
    manifest.loc[manifest.image == victim, "split"] = "no/slashes"
    manifest.to_csv(source / "manifest.csv", index=False)
    result = _ingest(source, store, tmp_path)
    assert result.removed == 0 and result.bad_rows and all("split" in b.reason for b in result.bad_rows)
    assert store.count(IMAGES) == 10


def test_broken_images_are_reported_and_never_listed(tmp_path, store):
    folder = tmp_path / "broken"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not an image")
    (folder / "empty.png").write_bytes(b"")
    result = _ingest(folder, store, tmp_path, "broken")
    assert result.added == 3 - len(result.bad_rows) == 1  # the plan counts what was written
    assert sorted(Path(b.ref).name for b in result.bad_rows) == ["bad.png", "empty.png"]
    assert [r[0] for r in _rows(store, IMAGES, "path")] == ["good.png"]
    assert len(content_shards(tmp_path / "data" / "parquet")) == 1


def test_a_crash_before_the_plan_is_applied_is_finished_by_the_rerun(source, tmp_path, store):
    scan = ingest.scan_source(str(source), "shapes", tmp_path / "data" / "staging", store, 4)
    # Killed after one shard was written and loaded.
    written = write_shard(scan.content_path, scan.shards[0], tmp_path / "data" / "parquet", 64_000_000)
    load_shard(store, written.path)
    assert store.count(IMAGES) == 0 and 0 < written.n_images < 10
    result = _ingest(source, store, tmp_path)
    assert result.added == 10 and store.count(CONTENTS) == store.count(IMAGES) == 10
    assert result.new_content == 10 - written.n_images  # the first shard's contents were kept, not decoded again


def test_bad_dataset_names_are_user_errors(source, tmp_path, store):
    for name in ("../up", "", ".hidden", "a/b"):
        with pytest.raises(UserError, match="dataset name"):
            _ingest(source, store, tmp_path, name)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "image bytes"])
def test_a_lost_or_damaged_shard_is_written_again_from_the_source_and_its_images_get_vectors(source, tmp_path,
                                                                                            store, damage):
    _ingest(source, store, tmp_path)
    shards = stored_shards(store)
    victim = shards[0]
    in_victim = {i for i, s in _rows(store, CONTENTS, "image_id", "shard") if s == victim}
    if damage == "deleted":
        Path(victim).unlink()
    elif damage == "truncated":
        Path(victim).write_bytes(Path(victim).read_bytes()[:100])
    else:
        damage_an_image(victim)
    # Embedding names the shard and what to do, in one line, instead of leaving its images without vectors.
    expected = "cannot be read.*run `ravlm ingest`" if damage != "image bytes" else (
        "is damaged: image [0-9a-f]+ cannot be decoded.*delete the shard and run `ravlm ingest`")
    with pytest.raises(UserError, match=expected):
        embed.embed_shard(store, CountingEncoder(), victim)
    if damage == "image bytes":
        Path(victim).unlink()  # as the message says
    summary = _ingest(source, store, tmp_path)  # nothing changed in the source: only the lost bytes are rewritten
    assert (summary.added, summary.changed, summary.new_content) == (0, 0, len(in_victim))
    # Shards are named by their content ids: the same bytes land in a good file of the same name.
    assert set(pq.read_table(victim, columns=["image_id"]).column("image_id").to_pylist()) == in_victim
    encoder = CountingEncoder()
    for shard in stored_shards(store):
        embed.embed_shard(store, encoder, shard)
    vectors = set(store.read(image_vectors_table(encoder.tag), columns=["image_id"]).column("image_id").to_pylist())
    assert vectors == {i for (i,) in _rows(store, IMAGES, "image_id")} and encoder.images == N_TRAIN + N_TEST
    assert _ingest(source, store, tmp_path).new_content == 0  # repaired: the next night is idle again


def test_every_caption_of_a_manifest_listing_an_image_on_several_rows_is_kept(tmp_path, store):
    folder = tmp_path / "flickr"
    folder.mkdir()
    for n in range(2):
        Image.new("RGB", (8, 8), (n * 90, 30, 0)).save(folder / f"{n}.png")
    rows = ['{"image": "0.png", "caption": "a dog runs", "split": "train"}',
            '{"image": "0.png", "caption": "a brown dog running", "split": "train"}',
            '{"image": "0.png", "caption": "a dog runs", "split": "train"}',  # the same caption again: kept once
            '{"image": "0.png", "question": "what runs?", "answer": "dog", "split": "train"}',  # no caption
            '{"image": "1.png", "caption": "a red car", "split": "train"}']
    (folder / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    first = _ingest(folder, store, tmp_path, "flickr")
    assert (first.added, first.captions, first.bad_rows) == (2, 3, [])
    stored = {p: (c, cs) for p, c, cs in _rows(store, IMAGES, "path", "caption", "captions")}
    assert stored == {"0.png": ("a dog runs", ["a dog runs", "a brown dog running"]),
                      "1.png": ("a red car", ["a red car"])}
    assert store.count(QA) == 1
    versions = {t: store.table(t).version for t in (IMAGES, QA)}
    again = _ingest(folder, store, tmp_path, "flickr")
    assert (again.reannotated, again.unchanged) == (0, 2)
    assert {t: store.table(t).version for t in versions} == versions
    # One more caption row re-annotates that listing and no other.
    (folder / "manifest.jsonl").write_text("\n".join([*rows, '{"image": "1.png", "caption": "a car", "split": "train"}']))
    more = _ingest(folder, store, tmp_path, "flickr")
    assert (more.reannotated, more.unchanged, more.captions) == (1, 1, 4)
    assert dict(_rows(store, IMAGES, "path", "captions"))["1.png"] == ["a red car", "a car"]
