"""Tests for ravlm_core.ingest.sources: easy-VQA, manifests and plain folders."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ravlm_core.errors import UserError
from ravlm_core.ingest import easy_vqa
from ravlm_core.ingest.manifests import read_questions_file
from ravlm_core.ingest.records import ManifestError
from ravlm_core.ingest.sources import open_source
from tests.helpers.shapes import make_shapes_dataset


@pytest.fixture(scope="module")
def easy_vqa_records():
    records, bad = open_source("easy-vqa")
    assert bad == []
    return records


# --- easy-VQA -------------------------------------------------------------------------------------


def test_easy_vqa_counts(easy_vqa_records):
    images = Counter(r.split for r in easy_vqa_records)
    qa = Counter()
    for record in easy_vqa_records:
        qa[record.split] += len(record.qa)
    assert images == {"train": 4000, "test": 1000}
    assert qa == {"train": 38575, "test": 9673}
    assert len({r.path for r in easy_vqa_records}) == 5000
    answers = {pair.answer for r in easy_vqa_records for pair in r.qa}
    assert len(answers) == 13


def test_easy_vqa_question_types(easy_vqa_records):
    for record in easy_vqa_records[:500]:
        for pair in record.qa:
            assert pair.question_type in {"color", "shape", "yes/no"}
            assert (pair.question_type == "yes/no") == (pair.answer in {"yes", "no"})
            if pair.question_type == "color":
                assert "color" in pair.question


def test_easy_vqa_every_caption_agrees_with_its_answers(easy_vqa_records):
    colors = {p.answer for r in easy_vqa_records for p in r.qa if p.question_type == "color"}
    shapes = {p.answer for r in easy_vqa_records for p in r.qa if p.question_type == "shape"}
    assert all(r.caption for r in easy_vqa_records)
    for record in easy_vqa_records:
        prefix, color, shape = record.caption.rsplit(" ", 2)
        assert prefix == "a picture of a" and color in colors and shape in shapes
        for pair in record.qa:
            if pair.question_type == "color":
                assert pair.answer == color, (record.ref, pair)
            elif pair.question_type == "shape":
                assert pair.answer == shape, (record.ref, pair)
            else:
                words = set(pair.question.rstrip("?").split())
                named = words & (colors | shapes)
                negated = bool(words & {"not", "no"})
                present = (pair.answer == "yes") != negated
                assert (named <= {color, shape}) == present, (record.ref, pair, record.caption)


def test_easy_vqa_pixel_fallback_matches_answers_where_answers_decide(easy_vqa_records):
    # The fallback is only used where answers are silent; check it against images whose answers fix both.
    colors = frozenset(p.answer for r in easy_vqa_records for p in r.qa if p.question_type == "color")
    shapes = frozenset(p.answer for r in easy_vqa_records for p in r.qa if p.question_type == "shape")
    vocab = easy_vqa._Vocabulary(colors, shapes)
    checked = 0
    for record in easy_vqa_records[:400]:
        from_answers = easy_vqa._color_shape_candidates(record.qa, vocab)
        if all(len(c) == 1 for c in from_answers):
            assert easy_vqa._narrow_by_pixels(record.path, set(colors), set(shapes)) == from_answers, record.ref
            checked += 1
    assert checked > 300


# --- manifests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_formats(tmp_path, fmt):
    manifest = make_shapes_dataset(tmp_path, n_train=3, n_test=2, seed=1, fmt=fmt)
    assert manifest == tmp_path / f"manifest.{fmt}"
    rows = pd.read_csv(tmp_path / "manifest.csv") if fmt == "csv" else None
    records, bad = open_source(str(tmp_path))
    assert bad == []
    assert len(records) == 5
    assert Counter(r.split for r in records) == {"train": 3, "test": 2}
    for record in records:
        assert record.path.is_file()
        assert record.caption.startswith("a drawing of a ")
        assert 6 <= len(record.qa) <= 10
        assert {p.question_type for p in record.qa} == {"color", "shape", "yes/no"}
        assert record.ref.startswith(f"manifest.{fmt} ")
    if rows is not None:
        assert sum(len(r.qa) for r in records) == len(rows)
        assert records[0].ref == "manifest.csv row 1"


def _write_csv(folder: Path, text: str, name: str = "manifest.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    Image.new("RGB", (8, 8), "blue").save(folder / "b.png")
    (folder / name).write_text(text)
    return folder / name


def test_missing_image_file_is_a_bad_row_naming_file_and_row(tmp_path):
    _write_csv(tmp_path, "image,question,answer\na.png,q1,x\nmissing.png,q2,y\nb.png,q3,z\n")
    records, bad = open_source(str(tmp_path))
    assert sorted(r.path.name for r in records) == ["a.png", "b.png"]
    assert len(bad) == 1
    assert bad[0].ref == "manifest.csv row 2"
    assert "missing.png" in bad[0].reason and "does not exist" in bad[0].reason


def test_missing_image_column_raises_naming_file_and_columns(tmp_path):
    _write_csv(tmp_path, "file,question,answer\na.png,q,a\n")
    with pytest.raises(ManifestError) as err:
        open_source(str(tmp_path))
    message = str(err.value)
    assert "manifest.csv" in message and "file, question, answer" in message


@pytest.mark.parametrize(
    "row, missing",
    [("a.png,what is it?,", "answer"), ("a.png,,red", "question")],
)
def test_half_qa_rows_are_bad_rows(tmp_path, row, missing):
    _write_csv(tmp_path, f"image,question,answer\nb.png,q,a\n{row}\n")
    records, bad = open_source(str(tmp_path))
    assert [b.ref for b in bad] == ["manifest.csv row 2"]
    assert f"no {missing}" in bad[0].reason
    assert [r.path.name for r in records] == ["b.png"]


def test_rows_group_by_image_with_first_caption_and_default_split(tmp_path):
    _write_csv(tmp_path, "image,caption,question,answer\na.png,,q1,x\n./a.png,red square,q2,y\na.png,other,,\n")
    records, bad = open_source(str(tmp_path))
    assert bad == []
    [record] = records
    assert record.caption == "red square"
    assert record.split == "test"
    assert [(p.question, p.answer, p.question_type) for p in record.qa] == [("q1", "x", None), ("q2", "y", None)]


def test_conflicting_and_unsafe_splits_are_bad_rows(tmp_path):
    _write_csv(tmp_path, "image,split\na.png,train\na.png,test\nb.png,../evil\n")
    records, bad = open_source(str(tmp_path))
    assert [r.split for r in records] == ["train"]
    assert [b.ref for b in bad] == ["manifest.csv row 2", "manifest.csv row 3"]


def test_jsonl_refs_are_line_numbers_and_bad_json_is_a_bad_row(tmp_path):
    lines = [json.dumps({"image": "a.png", "question": "q", "answer": "a"}), "", "{not json", json.dumps({"image": "nope.png"})]
    _write_csv(tmp_path, "\n".join(lines) + "\n", name="manifest.jsonl")
    records, bad = open_source(str(tmp_path))
    assert [r.ref for r in records] == ["manifest.jsonl line 1"]
    assert [b.ref for b in bad] == ["manifest.jsonl line 3", "manifest.jsonl line 4"]


def test_two_manifests_is_an_error_and_explicit_manifest_wins(tmp_path):
    _write_csv(tmp_path, "image\na.png\n")
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"image": "b.png"}) + "\n")
    with pytest.raises(ManifestError, match="several manifests"):
        open_source(str(tmp_path))
    other = tmp_path / "elsewhere" / "list.csv"
    other.parent.mkdir()
    other.write_text("image\nb.png\n")
    records, _ = open_source(str(tmp_path), manifest=other)
    assert [r.path for r in records] == [tmp_path / "b.png"]


def test_folder_without_manifest_lists_images_recursively(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "one.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "two.JPG", format="JPEG")
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "deeper" / "three.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    records, bad = open_source(str(tmp_path))
    assert bad == []
    assert sorted(r.path.name for r in records) == ["one.png", "three.webp", "two.JPG"]
    assert all(r.split == "test" and r.caption is None and r.qa == [] for r in records)


def test_unknown_source_raises(tmp_path):
    with pytest.raises(UserError, match="neither"):
        open_source(str(tmp_path / "absent"))


def test_extra_columns_and_numbers_are_kept_wrong_types_are_bad_rows(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "how many?", "answer": 2, "photographer": "ann", "score": 0.5},
            {"image": "a.png", "caption": ["a", "list"]}, {"image": "a.png", "question": True, "answer": "x"}]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    records, bad = open_source(str(tmp_path))
    assert records[0].qa[0].answer == "2" and records[0].extra == {"photographer": "ann", "score": 0.5}
    assert [(b.ref, b.relpath) for b in bad] == [("manifest.jsonl line 2", "a.png"), ("manifest.jsonl line 3", "a.png")]
    assert "`caption` is list" in bad[0].reason and "`question` is bool" in bad[1].reason


def test_questions_file_plain_or_with_a_question_column(tmp_path):
    (tmp_path / "q.txt").write_text("what colour is it?\n\nis it round?\nwhat colour is it?\n")
    assert read_questions_file(tmp_path / "q.txt") == ["what colour is it?", "is it round?"]
    (tmp_path / "q.csv").write_text("question,other\nis it red?,1\n")
    assert read_questions_file(tmp_path / "q.csv") == ["is it red?"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="holds no question"):
        read_questions_file(tmp_path / "empty.txt")
