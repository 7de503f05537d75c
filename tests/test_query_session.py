"""What analysts get from `ravlm search` and `ravlm dedup`: every search mode, filters that are literals and
prefilter, hybrid search through a reranker, table / JSON / Parquet / HTML output, and near-duplicate groups.

One small store is built once for the module through the library (no Prefect): the shapes dataset embedded by
the built-in encoder trained on it, plus a dataset whose captions are markup. The near-duplicate tests use a
store of their own whose vectors are pixels, so what counts as "near" is known without a trained model.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance

from ravlm_core.config import Settings
from ravlm_core.embed import shards as embed
from ravlm_core.errors import UserError
from ravlm_core.index.indexes import build_indexes
from ravlm_core.ingest.shards import stored_shards
from ravlm_core.query.dedup import near_duplicates
from ravlm_core.query.results import SCHEMAS
from ravlm_core.query.session import Session, load_reranker
from ravlm_core.retrieval.filters import FILTER_COLUMNS, parse_filter, parse_filters
from ravlm_core.schemas import IMAGES, image_vectors_table
from ravlm_core.store import Store
from tests.helpers.cli import Ravlm
from tests.helpers.shapes import make_shapes_dataset
from tests.helpers.stores import ingest_folder

HOSTILE = ['<img src=x onerror="alert(1)">', "</figcaption><script>alert('x')</script> & more"]
SECOND_CAPTION = "the same turned figure, said a second way"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The shapes dataset (48 train, 16 test) and a two-image dataset with markup for captions, embedded."""
    from ravlm_core.embed.pinning import resolve_encoder
    from ravlm_core.encoders import load_encoder

    tmp = tmp_path_factory.mktemp("query")
    make_shapes_dataset(tmp / "shapes", n_train=48, n_test=16, seed=1, fmt="jsonl")
    hostile = tmp / "hostile"
    hostile.mkdir()
    rows = []
    for n, caption in enumerate(HOSTILE):
        image = Image.open(tmp / "shapes" / "images" / f"train_{n:05d}.png").convert("RGB").rotate(90)
        image.save(hostile / f"h{n}.png")
        rows.append(json.dumps({"image": f"h{n}.png", "caption": caption, "split": "test"}))
    rows.append(json.dumps({"image": "h1.png", "caption": SECOND_CAPTION, "split": "test"}))  # a row per caption
    (hostile / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    data = tmp / "data"
    store = Store(str(data / "lancedb"))
    ingest_folder(tmp / "shapes", "shapes", store, data)
    ingest_folder(hostile, "hostile", store, data)
    encoder = load_encoder(resolve_encoder("builtin", store, data / "models", "cpu"))
    for shard in stored_shards(store):
        embed.embed_shard(store, encoder, shard)
    embed.embed_texts(store, encoder)
    settings = Settings(data_dir=data, device="cpu")
    build_indexes(store, encoder.tag, None, settings.min_rows_for_ann, settings.ann_target_recall)
    session = Session(settings)
    # Interactive commands need no Prefect server: the API points at a closed port.
    ravlm = Ravlm(data, tmp / "reports", "http://127.0.0.1:9/api")
    return {"session": session, "store": store, "folder": tmp / "shapes", "ravlm": ravlm, "tmp": tmp}


def image_of(shapes, name: str) -> Path:
    return shapes["folder"] / "images" / name


def test_text_to_image_and_image_to_image(shapes):
    session = shapes["session"]
    hits = session.search("a drawing of a purple star", k=3, dataset="shapes")
    assert len(hits) == 3 and hits[0]["caption"] == "a drawing of a purple star"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    query = image_of(shapes, "test_00050.png")
    [own] = session.search(image=query, k=1, dataset="shapes")
    assert own["path"] == "images/test_00050.png" and own["score"] == pytest.approx(1.0, abs=1e-3)
    assert session.search("a star", dataset="no-such-set") == []


def test_image_to_text_returns_the_images_own_caption_and_where_each_text_is_used(shapes):
    session, store = shapes["session"], shapes["store"]
    [caption] = store.read(IMAGES, columns=["caption"], where="path = 'images/test_00050.png'").column("caption").to_pylist()
    hits = session.search(image=image_of(shapes, "test_00050.png"), k=5, target="texts")
    assert caption in [h["text"] for h in hits[:3]]
    assert hits.kind == "texts" and all(h["kind"] in {"caption", "question", "caption, question"} for h in hits)
    mine = next(h for h in hits if h["text"] == caption)
    listed = store.count(IMAGES, f"caption = '{caption}' AND removed_at IS NULL")
    assert mine["kind"] == "caption" and mine["listings"] == listed and mine["path"].startswith("images/")
    # Within a filter, only texts of the listings that pass it come back, and are counted there.
    test_only = session.search(image=image_of(shapes, "test_00050.png"), k=5, target="texts", split="test")
    assert test_only and all(h["split"] == "test" for h in test_only)


def test_every_caption_of_a_listing_is_searchable_and_traced_to_it_within_a_filter(shapes):
    hits = shapes["session"].search(SECOND_CAPTION, k=3, target="texts", dataset="hostile")
    second = next(h for h in hits if h["text"] == SECOND_CAPTION)
    assert (second["kind"], second["listings"], second["path"], second["dataset"]) == ("caption", 1, "h1.png", "hostile")


def test_where_filters_prefilter_so_a_selective_filter_still_returns_k(shapes):
    session = shapes["session"]
    # Ten listings pass (train_00010 ... train_00019); a post-filter on the 10 nearest would keep fewer.
    nearest = session.search("a drawing of a cyan hexagon", k=10, dataset="shapes")
    hits = session.search("a drawing of a cyan hexagon", k=10, where=["path~TRAIN_0001"])
    assert sum(h["path"].startswith("images/train_0001") for h in nearest) < 10
    assert sorted(h["path"] for h in hits) == [f"images/train_{n:05d}.png" for n in range(10, 20)]
    assert {h["split"] for h in session.search("a star", k=20, where=["split!=train", "dataset=shapes"])} == {"test"}
    assert len(session.search("a star", k=5, where=["width>=64"])) == 5
    assert session.search("a star", k=5, where=["width>64"]) == []
    both = session.search("a star", k=3, where={"path": ["images/train_00003.png", "images/test_00060.png"]})
    assert sorted(h["path"] for h in both) == ["images/test_00060.png", "images/train_00003.png"]
    assert len(session.search("a star", k=3, where=["ingested_at>2000-01-01"])) == 3
    assert session.search("a star", k=3, where=["ingested_at<2000-01-01"]) == []


def test_filter_values_are_always_literals(shapes):
    session, store = shapes["session"], shapes["store"]
    before = store.count(IMAGES)
    for attack in ("split=test' OR '1'='1", "split='test' OR '1'='1'", "caption~x') OR true OR ('",
                   "split in test') OR (1=1"):
        assert session.search("a star", k=5, where=[attack]) == [], attack
    assert store.count(IMAGES) == before
    sql = parse_filter("split=test' OR '1'='1").sql()
    assert sql == "split = 'test'' OR ''1''=''1'"


def test_filter_mistakes_are_one_line_errors():
    for given, message in (("nope=1", "unknown column 'nope' (columns: dataset, split"),
                           ("width>abc", "width holds whole numbers, not 'abc'"),
                           ("width~6", "~ (contains) applies to text columns"),
                           ("ingested_at>yesterday", "holds times"),
                           ("split", "not a filter")):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_filters([given])
    assert [f.sql() for f in parse_filters({"split": "test", "width": 64})] == ["split = 'test'", "width = 64"]
    assert [f.sql() for f in parse_filters(["split in train, 'val'", "caption~Red Star"])] == [
        "split IN ('train', 'val')", "contains(lower(caption), 'red star')"]
    from flows.cli import SEARCH_WHERE  # its help lists the columns without importing the library

    assert all(column in SEARCH_WHERE.help for column in FILTER_COLUMNS)


def test_hybrid_fuses_the_vector_and_full_text_rankings_by_reciprocal_rank(shapes):
    session, store = shapes["session"], shapes["store"]
    query = "purple"
    hybrid = session.search(query, k=10, hybrid=True, dataset="shapes")
    vector = session.search(query, k=50, dataset="shapes")
    words = store.table(IMAGES).search(query, query_type="fts", fts_columns="caption").where(
        "dataset = 'shapes' AND removed_at IS NULL", prefilter=True).limit(50).to_arrow()
    text_rank = {}
    for image_id in words.sort_by([("_score", "descending")]).column("image_id").to_pylist():
        text_rank.setdefault(image_id, len(text_rank) + 1)
    vector_rank = {h["image_id"]: n for n, h in enumerate(vector, 1)}
    assert len(hybrid) == 10
    for hit in hybrid:
        expected = sum(1 / (60 + ranks[hit["image_id"]]) for ranks in (vector_rank, text_rank) if hit["image_id"] in ranks)
        assert hit["score"] == pytest.approx(expected, abs=1e-5)
        assert (hit["text_score"] is not None) == (hit["image_id"] in text_rank)
    # Every image whose caption says "purple" outranks every one whose caption does not.
    says = ["purple" in h["caption"] for h in hybrid]
    assert any(says) and says == sorted(says, reverse=True)
    assert [h["image_id"] for h in hybrid] != [h["image_id"] for h in vector[:10]]
    texts = session.search("Which colour is the figure?", k=5, target="texts", hybrid=True)
    assert texts[0]["text"] == "Which colour is the figure?" and texts[0]["text_score"] is not None


def test_hybrid_with_a_local_cross_encoder_ranks_by_its_scores(shapes, tmp_path):
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    from tests.helpers.random_models import _bert_tokenizer

    tokenizer = _bert_tokenizer(512)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    hits = shapes["session"].search("a purple star", k=8, hybrid=True, reranker=f"cross-encoder:{tmp_path}",
                                    dataset="shapes")
    expected = CrossEncoder(str(tmp_path), device="cpu").predict([["a purple star", h["caption"]] for h in hits])
    assert len(hits) == 8 and np.allclose([h["score"] for h in hits], expected, atol=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for spec, message in (("cross-encoder:/no/such/folder", "is not a folder"), ("bm25", "unknown reranker")):
        with pytest.raises(UserError, match=message):
            load_reranker(spec)


def test_results_convert_to_pandas_and_arrow(shapes):
    hits = shapes["session"].search("a star", k=4, split="test")
    frame = hits.to_pandas()
    assert list(frame.columns) == SCHEMAS["images"].names and list(frame["rank"]) == [1, 2, 3, 4]
    assert list(frame["image_id"]) == [h["image_id"] for h in hits] and set(frame["split"]) == {"test"}
    assert hits.to_arrow().schema == SCHEMAS["images"]
    assert json.loads(json.dumps(hits)) == list(hits)  # still the list of dicts `--json` prints


def cli(shapes, capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """`ravlm --data-dir D ARGS` in this process, through the CLI's own entry point: (exit code, stdout, stderr)."""
    from flows.cli import main

    monkeypatch.setattr(sys, "argv", ["ravlm", *shapes["ravlm"].options, "--device", "cpu", *args])
    with pytest.raises(SystemExit) as done:
        main()
    printed = capsys.readouterr()
    return done.value.code, printed.out, printed.err


def test_cli_search_runs_without_prefect_and_reads_every_filter_value_as_a_literal(shapes):
    ravlm = shapes["ravlm"]  # a separate process whose Prefect API is a closed port
    assert ravlm("search", "a star", "--where", "split=test' OR '1'='1") == []
    assert {h["split"] for h in ravlm("search", "a star", "--where", "split=test", "-k", "3")} == {"test"}


def test_cli_search_modes_and_formats(shapes, tmp_path, capsys, monkeypatch):
    code, out, _ = cli(shapes, capsys, monkeypatch, "search", "--image", str(image_of(shapes, "test_00050.png")),
                       "--target", "texts", "-k", "3", "--output-format", "json")
    texts = json.loads(out)
    assert code == 0 and len(texts) == 3 and all(h["text"] and h["kind"] for h in texts)
    code, out, _ = cli(shapes, capsys, monkeypatch, "search", "a purple star", "-k", "3", "--hybrid")
    assert code == 0 and "full text" in out and "images/" in out  # the table, with both legs' scores

    parquet = tmp_path / "hits.parquet"
    code, out, _ = cli(shapes, capsys, monkeypatch, "search", "a star", "-k", "7", "--hybrid", "--output-format",
                       "parquet", "--output", str(parquet), "--json")
    table = pq.read_table(parquet)
    assert code == 0 and json.loads(out)["rows"] == table.num_rows == 7
    assert table.column_names == SCHEMAS["images"].names and table.column("text_score").null_count < 7

    page = tmp_path / "grid.html"
    code, out, _ = cli(shapes, capsys, monkeypatch, "search", "<b>markup</b>", "--dataset", "hostile",
                       "--output-format", "html", "--output", str(page))
    html = page.read_text()
    assert code == 0 and out.strip() == f"wrote 2 rows to {page}"
    assert html.count('<img src="data:image/jpeg;base64,') == 2
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html and 'onerror="alert(1)"' not in html
    assert "&lt;script&gt;" in html and "<script" not in html and "<b>markup" not in html


def test_cli_search_mistakes_are_one_line(shapes, capsys, monkeypatch):
    image = str(image_of(shapes, "test_00050.png"))
    for args, expected in ((["a star", "--where", "nope=1"], "error: --where 'nope=1': unknown column 'nope' (columns: "),
                           (["a star", "--output-format", "html"],
                            "error: --output-format html writes a file: give --output PATH"),
                           (["a star", "--output-format", "xml"], "error: Invalid value for '--output-format': "),
                           (["a star", "--target", "captions"], "error: Invalid value for '--target': "),
                           (["--image", image, "--hybrid"], "error: --hybrid needs a text query"),
                           (["a star", "--output-format", "parquet", "-o", "/nonexistent/folder/hits.parquet"],
                            "error: cannot write --output /nonexistent/folder/hits.parquet: ")):
        code, _, err = cli(shapes, capsys, monkeypatch, "search", *args)
        assert code == 2 and err.startswith(expected) and len(err.strip().splitlines()) == 1, err


def test_cli_dedup_over_the_stored_vectors(shapes, tmp_path, capsys, monkeypatch):
    # Same-class shapes sit close in the learnt space; how close depends on the heads (linear ones spread them more).
    code, out, _ = cli(shapes, capsys, monkeypatch, "dedup", "--threshold", "0.95", "--dataset", "shapes", "--json")
    rows = json.loads(out)
    assert code == 0 and rows and all(r["similarity"] >= 0.95 and r["dataset"] == "shapes" for r in rows)
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    assert all(len(members) == members[0]["size"] >= 2 for members in groups.values())
    page = tmp_path / "dups.html"
    code, _, _ = cli(shapes, capsys, monkeypatch, "dedup", "--threshold", "0.95", "--dataset", "shapes",
                     "--output-format", "html", "-o", str(page))
    assert code == 0 and page.read_text().count("<img") == len(rows)
    for threshold in ("0", "1.5", "-0.2"):
        code, _, err = cli(shapes, capsys, monkeypatch, "dedup", "--threshold", threshold)
        assert code == 2 and err.startswith("error: --threshold must be a cosine similarity in (0, 1]"), err


class PixelEncoder:
    """Vectors that are an image's own pixels (16x16 grey, mean removed): a brightened or resized copy stays
    close to its original, a different picture does not."""

    tag, dim, batch_size = "pixels-1", 256, 8

    @staticmethod
    def preprocess(image) -> np.ndarray:  # what embedding's reader calls per image: uint8 [16, 16]
        return np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        rows = pixels.reshape(len(pixels), -1).astype(np.float32)
        rows -= rows.mean(axis=1, keepdims=True)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def embed_images(self, images) -> np.ndarray:
        return self.embed_pixels(np.stack([self.preprocess(image) for image in images]))


def photo(seed: int) -> Image.Image:
    """A photo-like picture: a gradient with a few coloured discs, different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:128]
    pixels = np.stack([x * rng.uniform(0.5, 3), y * rng.uniform(0.5, 3), (x + y) * rng.uniform(0.5, 3)], -1) % 256
    for cx, cy in rng.integers(10, 110, (5, 2)):
        pixels[(x - cx) ** 2 + (y - cy) ** 2 < rng.integers(40, 400)] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture
def photos(tmp_path, store):
    """Twelve distinct photos, a brightened and shrunk JPEG copy of photo03, and a byte copy of photo07 under
    another name."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(12):
        photo(n).save(folder / f"photo{n:02d}.png")
    ImageEnhance.Brightness(photo(3)).enhance(1.15).resize((112, 84)).save(folder / "photo03_edit.jpg", quality=90)
    (folder / "photo07_again.png").write_bytes((folder / "photo07.png").read_bytes())
    ingest_folder(folder, "photos", store, tmp_path / "data")
    encoder = PixelEncoder()
    for shard in stored_shards(store):
        embed.embed_shard(store, encoder, shard)
    return store


def test_dedup_finds_the_planted_copy_and_nothing_else(photos):
    groups = near_duplicates(photos, PixelEncoder.tag, 0.9)
    assert sorted(r["path"] for r in groups) == ["photo03.png", "photo03_edit.jpg"]
    assert {r["group"] for r in groups} == {1} and all(r["size"] == 2 and r["similarity"] >= 0.9 for r in groups)
    # The route through the vector index (for collections past EXACT_MAX_ROWS) finds the same group.
    assert near_duplicates(photos, PixelEncoder.tag, 0.9, exact_max_rows=0) == groups
    # At a threshold no pair reaches, nothing is grouped; outside the dataset asked for, nothing is looked at.
    assert near_duplicates(photos, PixelEncoder.tag, 0.9999) == []
    assert near_duplicates(photos, PixelEncoder.tag, 0.9, dataset="elsewhere") == []
    # The byte copy of photo07 is no near-duplicate: it is the same image (one vector), listed twice.
    assert photos.count(image_vectors_table(PixelEncoder.tag)) == 13


def test_dedup_rejects_a_threshold_outside_0_1_and_a_store_without_vectors(photos):
    for threshold in (0, -0.5, 1.01):
        with pytest.raises(UserError, match=r"--threshold must be a cosine similarity in \(0, 1\]"):
            near_duplicates(photos, PixelEncoder.tag, threshold)
    with pytest.raises(UserError, match="no image vectors for encoder nothing-1"):
        near_duplicates(photos, "nothing-1", 0.9)


def test_hybrid_without_a_full_text_index_says_what_to_run(photos):
    from ravlm_core.query.session import Scope, search_images

    with pytest.raises(UserError, match="has no full-text index for --hybrid: run `ravlm embed`"):
        search_images(photos, PixelEncoder.tag, np.ones((1, 256), np.float32) / 16, 3, Scope(), fts_query="x",
                      reranker=load_reranker("rrf"))
