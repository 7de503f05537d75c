"""Consensus caption transfer beats nearest-neighbour transfer when the nearest neighbour is an outlier, and
draws on every caption of every neighbour."""
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ravlm_core.generators import Generation, GenerationJob, GeneratorSpec
from ravlm_core.ids import text_id
from ravlm_core.ingest.membership import memberships_of
from ravlm_core.jobs import captioning
from ravlm_core.jobs.captioning import consensus_captions, nearest_captions, run_caption_part
from ravlm_core.retrieval.knowledge import load_knowledge_base
from ravlm_core.retrieval.search import Neighbours
from ravlm_core.schemas import (
    CAPTION_PREDICTIONS,
    IMAGES,
    MEMBERSHIPS,
    image_vectors_table,
    text_vectors_table,
    vector_schema,
)
from ravlm_core.store import Store
from tests.helpers.stores import ingest_folder


def test_consensus_prefers_the_caption_most_neighbours_agree_with():
    vecs = {"a red circle": np.array([1, 0, 0], np.float32), "a red ring": np.array([0.95, 0.31, 0], np.float32),
            "a blue square": np.array([0, 0, 1], np.float32)}
    references = {"n1": ["a blue square"], "n2": ["a red circle"], "n3": ["a red ring"], "n4": ["a red circle"]}
    # The single nearest image is the outlier; its caption must not win.
    neighbours = Neighbours([["n1", "n2", "n3", "n4"]], [[0.95, 0.94, 0.94, 0.93]])
    assert consensus_captions(neighbours, references, vecs) == ["a red circle"]


def test_consensus_candidates_are_every_caption_of_every_neighbour():
    unit = lambda *v: np.array(v, np.float32) / np.linalg.norm(v)  # noqa: E731
    vecs = {"a dog": unit(1, 0, 0), "a dog on grass": unit(1, 1, 0), "grass": unit(0, 1, 0),
            "a cat": unit(0, 0, 1), "a dog in a park": unit(1, 0.9, 0.1)}
    # Neither neighbour's first caption is the one both agree with: it is n1's second one.
    references = {"n1": ["a dog", "a dog in a park"], "n2": ["grass", "a dog on grass", "a cat"]}
    neighbours = Neighbours([["n1", "n2"]], [[0.9, 0.9]])
    assert consensus_captions(neighbours, references, vecs) == ["a dog in a park"]
    # Only first captions (what the KB held before): the best of "a dog" and "grass" against both.
    firsts = {i: texts[:1] for i, texts in references.items()}
    assert consensus_captions(neighbours, firsts, vecs) in (["a dog"], ["grass"])


def test_consensus_weighs_each_neighbour_once_however_many_captions_it_has():
    vecs = {"red": np.array([1, 0], np.float32), "blue": np.array([0, 1], np.float32)}
    # n2 says "blue" five times but is one image; n1 and n3 (as close) say "red".
    references = {"n1": ["red"], "n2": ["blue"] * 5, "n3": ["red"]}
    neighbours = Neighbours([["n1", "n2", "n3"]], [[0.9, 0.9, 0.9]])
    assert consensus_captions(neighbours, references, vecs) == ["red"]


def test_consensus_empty_without_captioned_neighbours():
    assert consensus_captions(Neighbours([["x"]], [[0.9]]), {}, {}) == [""]
    assert consensus_captions(Neighbours([["x"]], [[0.9]]), {"x": []}, {}) == [""]


def test_nearest_captions_pick_the_closest_text():
    texts = ["a", "b"]
    text_vectors = np.eye(2, dtype=np.float32)
    images = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    assert nearest_captions(images, texts, text_vectors) == ["b", "a"]
    assert nearest_captions(images, [], np.zeros((0, 2), np.float32)) == ["", ""]


@pytest.fixture
def flickr_like(tmp_path):
    """Train and test photos listed one manifest row per caption (as Flickr8k's manifest), with image vectors by
    colour and caption vectors near their colour's axis."""
    folder = tmp_path / "src"
    folder.mkdir()
    captions = {"red": ["a red ball", "a round red toy", "red"], "blue": ["a blue ball", "a blue sphere"]}
    rows = []
    for split, n in (("train", 2), ("test", 1)):
        for color, texts in captions.items():
            for i in range(n):
                name = f"{split}-{color}-{i}.png"
                Image.new("RGB", (8, 8), (200 if color == "red" else 0, 10 * i, 200 if color == "blue" else 0)).save(
                    folder / name)
                rows += [json.dumps({"image": name, "caption": text, "split": split}) for text in texts]
    (folder / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    store = Store(str(tmp_path / "lancedb"))
    ingest_folder(folder, "flickr", store, tmp_path / "data")
    images = store.read(IMAGES, columns=["image_id", "caption"]).to_pylist()
    axis = {"red": np.array([1, 0, 0], np.float32), "blue": np.array([0, 1, 0], np.float32)}
    _vectors(store, image_vectors_table("t"), "image_id", [r["image_id"] for r in images],
             [axis[r["caption"].split()[1]] for r in images], memberships_of(store, [r["image_id"] for r in images]))
    texts = [t for color in captions for t in captions[color]]
    # "a round red toy" lies between "a red ball" and the outlier "red": the consensus of the red captions.
    lean = {"a red ball": [0.9, 0, -0.44], "a round red toy": [1, 0, 0.1], "red": [0.3, 0.3, 0.9],
            "a blue ball": [0, 0.9, 0.44], "a blue sphere": [0, 1, 0.2]}
    _vectors(store, text_vectors_table("t"), "text_id", [text_id(t) for t in texts],
             [np.array(lean[t], np.float32) / np.linalg.norm(lean[t]) for t in texts])
    return store, load_knowledge_base(store, "t", "q", [("flickr", "train")])


def _vectors(store, table, key, ids, vectors, memberships=None):
    columns = {key: ids, "vector": vectors, "model_tag": ["t"] * len(ids), "embedded_at": [None] * len(ids)}
    if memberships is not None:
        columns["memberships"] = [memberships[i] for i in ids]
    schema = vector_schema(3, key, MEMBERSHIPS if memberships is not None else ())
    store.upsert(table, pa.Table.from_pydict(columns, schema=schema), key)


def test_the_knowledge_base_holds_every_caption_and_its_fingerprint_follows_them(flickr_like):
    store, kb = flickr_like
    red = next(i for i, c in kb.captions.items() if c == "a red ball")
    assert kb.references_of(red) == ["a red ball", "a round red toy", "red"]
    assert kb.references_of("not in the kb") == []
    member = store.read(IMAGES, columns=["member_id"], where=f"image_id = '{red}'").column("member_id")[0].as_py()
    store.table(IMAGES).update(where=f"member_id = '{member}'", values={"captions": ["a red ball"]})
    fewer = load_knowledge_base(store, "t", "q", [("flickr", "train")])
    assert fewer.references_of(red) == ["a red ball"] and fewer.captions == kb.captions
    assert fewer.fingerprint != kb.fingerprint  # jobs and trained models over the KB are recomputed


def test_caption_transfer_agrees_over_every_caption_and_nearest_caption_retrieves_no_image(flickr_like):
    store, kb = flickr_like
    consensus = GenerationJob("consensus", GeneratorSpec.parse("builtin-transfer"), "t")
    run_caption_part(store, kb, "flickr", "test", "0000:g", consensus, k=2)
    rows = store.read(CAPTION_PREDICTIONS, where="job_id = 'consensus'").to_pylist()
    # Not any image's first caption: a second caption every red neighbour shares.
    by_color = {r["reference"].split()[1]: r["prediction"] for r in rows}
    assert by_color["red"] == "a round red toy" and by_color["blue"] in ("a blue ball", "a blue sphere")
    assert all(len(r["neighbour_ids"]) == 2 and r["variant"] == "consensus" for r in rows)
    nearest = GenerationJob("nearest", GeneratorSpec.parse("nearest-caption"), "t")
    run_caption_part(store, kb, "flickr", "test", "0000:g", nearest, k=2)
    rows = store.read(CAPTION_PREDICTIONS, where="job_id = 'nearest'").to_pylist()
    assert sorted(r["prediction"] for r in rows) == ["a blue sphere", "a round red toy"]
    assert all(r["neighbour_ids"] == [] and r["variant"] == "nearest-caption" for r in rows)


def test_model_generators_get_every_caption_of_each_neighbour_in_their_context(flickr_like, monkeypatch):
    store, kb = flickr_like
    seen = []

    class Recorder:
        needs_pixels = False

        def generate(self, requests, task):
            seen.extend(requests)
            return [Generation("a ball", "prompt") for _ in requests]

    monkeypatch.setattr(captioning, "cached_generator", lambda *args: Recorder())
    job = GenerationJob("vlm", GeneratorSpec.parse("vlm:/m,context_items=1"), "t")
    run_caption_part(store, kb, "flickr", "test", "0000:g", job, k=2)
    assert len(seen) == 2 and all(len(r.context) == 1 for r in seen)
    for request in seen:
        item = request.context[0]
        assert item["caption"] == item["captions"][0] and item["captions"] == kb.references_of(item["image_id"])
        assert len(item["captions"]) in (2, 3)
