"""Embedding is incremental and idempotent: only images and texts the vector tables lack are encoded."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ravlm_core.embed import shards as embed
from ravlm_core.errors import UserError
from ravlm_core.imaging import SquarePixels, decode_image
from ravlm_core.ingest.shards import content_shards
from ravlm_core.schemas import image_vectors_table, question_vectors_table, text_vectors_table
from ravlm_core.store import Store, in_list
from tests.helpers.encoders import CountingEncoder
from tests.helpers.shapes import make_shapes_dataset
from tests.helpers.stores import damage_an_image, ingest_folder


@pytest.fixture
def shards(tmp_path, store) -> list[str]:
    folder = tmp_path / "src"
    make_shapes_dataset(folder, n_train=6, n_test=4, seed=2)
    ingest_folder(folder, "shapes", store, tmp_path / "data", shard_size=3)
    return content_shards(tmp_path / "data" / "parquet")


def test_images_are_embedded_once_across_reruns_and_new_shards(store: Store, shards):
    encoder = CountingEncoder()
    sizes = [pq.read_metadata(path).num_rows for path in shards]
    first = [embed.embed_shard(store, encoder, path, batch_size=2) for path in shards[:2]]
    assert [r.new_images for r in first] == sizes[:2] and encoder.images == sum(sizes[:2])
    again = embed.embed_shard(store, encoder, shards[0], batch_size=2)
    assert again.new_images == 0 and encoder.images == sum(sizes[:2])  # nothing decoded or encoded twice
    rest = [embed.embed_shard(store, encoder, path, batch_size=2) for path in shards[2:]]
    assert [r.new_images for r in rest] == sizes[2:] and encoder.images == sum(sizes) == 10
    table = store.read(image_vectors_table(encoder.tag), columns=["image_id", "memberships"])
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 10
    assert sorted({m for labels in table.column("memberships").to_pylist() for m in labels}) == [
        "shapes:test", "shapes:train"]


def test_images_no_dataset_lists_are_not_embedded(store: Store, shards):
    removed = store.read("images", columns=["image_id"]).column("image_id").to_pylist()[:3]
    store.delete("images", in_list("image_id", removed))
    encoder = CountingEncoder()
    done = sum(embed.embed_shard(store, encoder, path).new_images for path in shards)
    assert done == encoder.images == 7
    assert not store.existing_ids(image_vectors_table(encoder.tag), "image_id", removed)


def test_texts_of_all_shards_are_embedded_once(store: Store, shards):
    encoder, questions = CountingEncoder(), CountingEncoder()
    captions, asked = embed.listed_texts(store)
    captions, asked = set(captions), set(asked)
    assert len(captions) > 3 and len(asked) > 10
    result = embed.embed_texts(store, encoder, batch_size=4, question_encoder=questions)
    assert result.new_texts == len(captions | asked) == len(encoder.texts)
    assert result.new_questions == len(asked) == len(questions.texts)
    assert store.count(text_vectors_table(encoder.tag)) == len(captions | asked)
    assert store.count(question_vectors_table(questions.tag)) == len(asked)
    rerun = embed.embed_texts(store, encoder, batch_size=4, question_encoder=questions)
    assert (rerun.new_texts, rerun.new_questions) == (0, 0) and len(encoder.texts) == len(captions | asked)


def test_every_caption_of_a_listing_is_embedded_not_only_the_first(store: Store, shards):
    listing = store.read("images", columns=["member_id", "caption"]).to_pylist()[0]
    extra = ["another way to say it", "and a third"]
    store.table("images").update(where=f"member_id = '{listing['member_id']}'",
                                 values={"captions": [listing["caption"], *extra]})
    captions, _ = embed.listed_texts(store)
    assert set(extra) <= set(captions) and listing["caption"] in captions
    encoder = CountingEncoder()
    embed.embed_texts(store, encoder)
    assert set(extra) <= set(encoder.texts)


def _stored_vectors(store: Store, tag: str) -> dict[str, np.ndarray]:
    table = store.read(image_vectors_table(tag), columns=["image_id", "vector"])
    return dict(zip(table.column("image_id").to_pylist(), np.array(table.column("vector").to_pylist())))


@pytest.mark.parametrize("workers", [0, 2])
def test_the_shard_path_gives_the_vectors_of_one_image_at_a_time(store: Store, shards, workers):
    # Batches of 3 cross the row groups' boundaries; two reader processes return their row groups out of order.
    encoder = CountingEncoder()
    assert sum(embed.embed_shard(store, encoder, path, batch_size=3, workers=workers).new_images
               for path in shards) == 10
    stored = _stored_vectors(store, encoder.tag)
    for path in shards:
        table = pq.read_table(path, columns=["image_id", "image"])
        for image_id, blob in zip(table.column("image_id").to_pylist(), table.column("image").to_pylist()):
            one = encoder.embed_images([decode_image(blob).image])[0]
            np.testing.assert_array_equal(stored[image_id], one)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_damaged_image_read_in_a_reader_thread_or_process_names_the_shard(store: Store, shards, workers):
    damage_an_image(shards[0])
    with pytest.raises(UserError, match="is damaged: image [0-9a-f]+ cannot be decoded.*run `ravlm ingest`"):
        embed.embed_shard(store, CountingEncoder(), shards[0], workers=workers)


def test_torch_resampled_batches_give_the_vectors_of_one_image_at_a_time(store: Store, shards):
    encoder = CountingEncoder()
    encoder.preprocess = SquarePixels(16, "bicubic-torch")
    assert sum(embed.embed_shard(store, encoder, path, batch_size=2).new_images for path in shards) == 10
    stored = _stored_vectors(store, encoder.tag)
    for path in shards:
        table = pq.read_table(path, columns=["image_id", "image"])
        for image_id, blob in zip(table.column("image_id").to_pylist(), table.column("image").to_pylist()):
            np.testing.assert_array_equal(stored[image_id], encoder.embed_images([decode_image(blob).image])[0])


def test_commits_come_every_write_rows_or_write_seconds(store: Store, shards, monkeypatch):
    path = max(shards, key=lambda p: pq.read_metadata(p).num_rows)  # 3 images: batches of 1, 1 and 1
    monkeypatch.setattr(embed, "WRITE_SECONDS", 0.0)  # a slow model: every batch is past the time limit
    encoder = CountingEncoder()
    embed.embed_shard(store, encoder, path, batch_size=1)
    versions = store.table(image_vectors_table(encoder.tag)).list_versions()
    monkeypatch.setattr(embed, "WRITE_SECONDS", 3600.0)
    other = CountingEncoder()
    other.tag = "fake-2"
    embed.embed_shard(store, other, path, batch_size=1)
    assert len(versions) - len(store.table(image_vectors_table(other.tag)).list_versions()) == 2
