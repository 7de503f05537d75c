"""A store written by the release before the library moved into stage sub-packages opens and searches.

tests/fixtures/legacy-store.tar.gz holds `data/` of a tiny shapes store (16 images, 125 questions) embedded with
a trained built-in encoder, written by that release. Its recorded paths are relative to the folder holding `data/`,
so every test runs from there. The ONNX graphs were left out of the archive: the code exports them on first use.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ravlm_core.config import Settings
from ravlm_core.query.session import Session
from ravlm_core.query.status import store_status
from tests.helpers.cli import Ravlm

ARCHIVE = Path(__file__).parent / "fixtures" / "legacy-store.tar.gz"
MODEL_TAG = "builtin-78e18effba5d"
CAPTION = "a drawing of a navy ellipse"  # two of the store's images have it


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    """The folder holding the extracted `data/`."""
    root = tmp_path_factory.mktemp("legacy")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return root


@pytest.fixture
def session(legacy, monkeypatch) -> Session:
    monkeypatch.chdir(legacy)
    return Session(Settings(data_dir=Path("data"), device="cpu"))


def test_a_text_search_finds_the_images_with_that_caption(session):
    hits = session.search(CAPTION, k=3)
    assert [h["caption"] for h in hits[:2]] == [CAPTION, CAPTION]
    assert hits[2]["caption"] != CAPTION and {h["dataset"] for h in hits} == {"shapes"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_an_image_search_with_a_stored_image_finds_its_own_listing_first(session, legacy):
    (shard,) = (legacy / "data" / "parquet" / "content").glob("*.parquet")
    table = pq.read_table(shard, columns=["image_id", "image"])
    image_id, image = table.column("image_id")[0].as_py(), table.column("image")[0].as_py()
    query = legacy / "query.png"
    query.write_bytes(image)
    hits = session.search(image=query, k=3)
    assert hits[0]["image_id"] == image_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert len({h["image_id"] for h in hits}) == 3


def test_a_text_search_over_texts_finds_the_caption_itself(session):
    hits = session.search(CAPTION, k=3, target="texts")
    assert hits[0]["text"] == CAPTION and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_status_reads_the_tables_and_the_pinned_encoder(session):
    status = store_status(session.store, session.settings.models_dir)
    rows = {name: table["rows"] for name, table in status["tables"].items()}
    assert rows == {"images": 16, "contents": 16, "qa": 125, f"{MODEL_TAG}__image_vectors": 16,
                    f"{MODEL_TAG}__text_vectors": 54}
    assert status["encoder"]["model_tag"] == MODEL_TAG
    assert status["encoder"]["train_recall"] is None and status["encoder"]["heldout_recall"] is None  # not measured
    assert status["images_without_vectors"]["count"] == 0


def test_ravlm_search_from_the_stores_folder(legacy):
    # Interactive commands need no Prefect server: the API points at a closed port.
    ravlm = Ravlm(Path("data"), Path("reports"), "http://127.0.0.1:9/api", cwd=legacy)
    hits = ravlm("search", CAPTION, "-k", "3")
    assert [h["caption"] for h in hits[:2]] == [CAPTION, CAPTION]
