"""Problems the user fixes by what they pass or run are UserErrors (the CLI prints one line, exit 2), whichever
stage finds them: called on the library directly, on a tmp_path store, without a Prefect server."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ravlm_core.contents import read_images
from ravlm_core.embed.pinning import resolve_encoder
from ravlm_core.errors import UserError
from ravlm_core.retrieval.knowledge import load_knowledge_base
from ravlm_core.retrieval.search import search, vectors_by_id
from ravlm_core.schemas import CONTENTS, CONTENTS_SCHEMA, IMAGES, IMAGES_SCHEMA, image_vectors_table


@pytest.fixture
def kb_without_qa(store):
    """A knowledge base of two uncaptioned images and no question-answer pairs."""
    rows = [{"member_id": f"m{n}", "image_id": f"i{n}", "dataset": "shapes", "split": "train", "path": f"{n}.png"}
            for n in range(2)]
    store.upsert(IMAGES, pa.Table.from_pylist(rows, IMAGES_SCHEMA), "member_id")
    return load_knowledge_base(store, "t", "q", [("shapes", "train")])


def test_a_kb_without_qa_pairs_cannot_train_an_answerer(store, kb_without_qa, tmp_path):
    from ravlm_core.jobs.vqa import train_answerer

    with pytest.raises(UserError, match="knowledge base shapes:train has no question-answer pairs.*--kb"):
        train_answerer(store, kb_without_qa, 2, tmp_path / "answerers", use_retrieval=True)


def test_a_kb_without_captions_cannot_train_smallcap(store, kb_without_qa, tmp_path):
    from ravlm_core.jobs.captioning import train_smallcap_for

    with pytest.raises(UserError, match="knowledge base shapes:train has no captions"):
        train_smallcap_for(store, kb_without_qa, 2, tmp_path / "smallcap")


def test_the_builtin_encoder_needs_captioned_images(store, tmp_path):
    with pytest.raises(UserError, match=r"no captioned 'train' images in .*ingest a dataset with captions first"):
        resolve_encoder("builtin", store, tmp_path / "models", "cpu")


def test_a_missing_vector_table_names_itself(store):
    table = image_vectors_table("never-embedded")
    with pytest.raises(UserError, match=f"there is no table {table} in .*run `ravlm embed` first"):
        vectors_by_id(store, table, ["i0"], "image_id")
    with pytest.raises(UserError, match=f"there is no table {table} in .*run `ravlm embed` first"):
        search(store, table, np.ones((1, 4), np.float32) / 2, k=1)


def test_ids_without_vectors_are_named(store):
    table = image_vectors_table("t")
    store.upsert(table, pa.table({"image_id": ["i0"], "vector": pa.array([[1.0, 0.0]], pa.list_(pa.float32(), 2))}),
                 "image_id")
    with pytest.raises(UserError, match=r"1 ids have no vector in .*\(first id: i9\): run `ravlm embed` first"):
        vectors_by_id(store, table, ["i0", "i9"], "image_id")


def test_a_missing_shard_names_the_shard(store, tmp_path):
    shard = tmp_path / "parquet" / "content" / "images-gone.parquet"
    store.upsert(CONTENTS, pa.Table.from_pylist([{"image_id": "i0", "shard": str(shard)}], CONTENTS_SCHEMA),
                 "image_id")
    with pytest.raises(UserError, match=f"shard {shard} is missing: run `ravlm ingest`"):
        read_images(store, ["i0"])
    with pytest.raises(UserError, match=r"1 image\(s\) are not in any shard \(first: i1\)"):
        read_images(store, ["i1"])


def test_a_model_the_user_names_must_exist(tmp_path):
    from ravlm_core.encoders import load_encoder
    from ravlm_core.model_files import resolve_folder

    with pytest.raises(UserError, match="holds neither encoder.json"):
        load_encoder(tmp_path)
    (tmp_path / "encoder.json").write_text('{"kind": "magic"}')
    with pytest.raises(UserError, match="unknown encoder kind 'magic'"):
        load_encoder(tmp_path)
    with pytest.raises(UserError, match="no local folder nobody/no-such-model"):
        resolve_folder("nobody/no-such-model")  # conftest sets HF_HUB_OFFLINE: the local cache only
