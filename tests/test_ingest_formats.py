"""Tests for ravlm_core.ingest.coco and .vqav2 (COCO captions, VQAv2) and the format dispatch in ravlm_core.ingest.sources."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from ravlm_core.errors import UserError
from ravlm_core.ingest.coco import open_coco
from ravlm_core.ingest.records import MAX_TEXT_CHARS, ManifestError
from ravlm_core.ingest.sources import open_source
from ravlm_core.ingest.vqav2 import open_vqav2
from tests.helpers.stores import ingest_folder


def _image(path: Path, color: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _coco_image(image_id: int, file_name: object, **more) -> dict:
    # The shape of an `images` entry in COCO's captions_*.json.
    return {"license": 3, "file_name": file_name, "coco_url": f"http://images.cocodataset.org/x/{image_id}.jpg",
            "height": 8, "width": 8, "date_captured": "2013-11-14 17:02:52", "flickr_url": "http://x", "id": image_id,
            **more}


def _coco_file(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    return _write_json(path, {"info": {"year": 2017}, "licenses": [{"url": "u", "id": 3, "name": "n"}],
                              "images": images, "annotations": annotations})


def _captions(image_id: int, first_id: int, n: int = 5) -> list[dict]:
    return [{"image_id": image_id, "id": first_id + k, "caption": f"caption {k} of {image_id}"} for k in range(n)]


# --- COCO -----------------------------------------------------------------------------------------


def test_coco_five_captions_in_annotation_id_order_with_extra(tmp_path):
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.png")
    _image(tmp_path / "c.jpg")
    annotations = list(reversed(_captions(1, 100) + _captions(2, 200)))  # file order is not id order
    annotations[0]["caption"] = "  caption 4 of 2 \n"  # COCO captions carry stray spaces and newlines
    path = _coco_file(tmp_path / "captions_val2017.json",
                      [_coco_image(1, "a.jpg"), _coco_image(2, "b.png"), _coco_image(3, "c.jpg")], annotations)
    records, bad = open_coco(tmp_path)
    assert bad == []
    by_name = {r.relpath: r for r in records}
    assert by_name["a.jpg"].captions == [f"caption {k} of 1" for k in range(5)]
    assert by_name["b.png"].captions == [f"caption {k} of 2" for k in range(5)]
    assert all(r.caption == (r.captions[0] if r.captions else None) for r in records)
    assert by_name["c.jpg"].caption is None and by_name["c.jpg"].captions == []  # no caption: still a record
    assert by_name["a.jpg"].extra == {"coco_id": 1, "coco_url": "http://images.cocodataset.org/x/1.jpg", "license": 3}
    assert by_name["a.jpg"].ref == "captions_val2017.json images[0]" and by_name["a.jpg"].path == tmp_path / "a.jpg"
    assert {r.split for r in records} == {"val2017"}
    assert open_coco(tmp_path, annotations=path)[0] == records


@pytest.mark.parametrize("name, split", [("captions_val2017.json", "val2017"), ("captions_train.json", "train"),
                                         ("captions_mine.json", "test")])
def test_coco_split_from_file_name(tmp_path, name, split):
    _image(tmp_path / "a.jpg")
    _coco_file(tmp_path / name, [_coco_image(1, "a.jpg")], _captions(1, 1))
    assert [r.split for r in open_coco(tmp_path)[0]] == [split]
    assert [r.split for r in open_coco(tmp_path, split="mine")[0]] == ["mine"]
    with pytest.raises(UserError, match="not a plain name"):
        open_coco(tmp_path, split="../up")


def test_coco_2014_layout_images_in_set_folder_annotations_in_annotations(tmp_path):
    _image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    _image(tmp_path / "val2014" / "COCO_val2014_000000000073.jpg")
    _coco_file(tmp_path / "annotations" / "captions_val2014.json",
               [_coco_image(42, "COCO_val2014_000000000042.jpg"), _coco_image(73, "COCO_val2014_000000000073.jpg")],
               _captions(42, 1) + _captions(73, 10))
    records, bad = open_coco(tmp_path)
    assert bad == []
    assert [r.relpath for r in records] == ["val2014/COCO_val2014_000000000042.jpg",
                                            "val2014/COCO_val2014_000000000073.jpg"]
    assert all(r.path.is_file() and r.split == "val2014" and len(r.captions) == 5 for r in records)
    # Through the dispatch, as `ravlm ingest --source-format coco` reads it.
    assert open_source(str(tmp_path), source_format="coco")[0] == records


def test_coco_discovery_needs_exactly_one_file_unless_the_split_picks(tmp_path):
    _image(tmp_path / "a.jpg")
    with pytest.raises(ManifestError, match=r"no COCO captions file \(captions_\*\.json\).*--annotations"):
        open_coco(tmp_path)
    _coco_file(tmp_path / "annotations" / "captions_train2017.json", [_coco_image(1, "a.jpg")], [])
    _coco_file(tmp_path / "annotations" / "captions_val2017.json", [_coco_image(1, "a.jpg")], _captions(1, 1))
    with pytest.raises(ManifestError) as err:
        open_coco(tmp_path)
    message = str(err.value)
    assert "annotations/captions_train2017.json, annotations/captions_val2017.json" in message
    assert "--annotations" in message and "\n" not in message
    records, _ = open_coco(tmp_path, split="val2017")
    assert records[0].caption == "caption 0 of 1"
    with pytest.raises(UserError, match="does not exist"):
        open_coco(tmp_path, annotations=tmp_path / "absent.json")


def test_coco_hostile_entries_are_bad_rows_and_good_rows_survive(tmp_path):
    source = tmp_path / "source"
    _image(source / "good.jpg")
    _image(source / "other.jpg", "blue")
    outside = _image(tmp_path / "outside.jpg")
    os.symlink(outside, source / "link.jpg")
    images = [_coco_image(1, "good.jpg"), _coco_image(2, str(outside)), _coco_image(3, "../outside.jpg"),
              _coco_image(4, "link.jpg"), _coco_image(5, "good.jpg"), _coco_image(6, 12),
              _coco_image(7, "missing.jpg"), _coco_image(8, "other.jpg"), {"file_name": "noid.jpg"}, "junk"]
    del images[5]["file_name"]  # id 6: no file_name at all
    annotations = [{"image_id": 1, "id": 1, "caption": "a good one"}, {"image_id": 1, "id": 2, "caption": 7},
                   {"image_id": 99, "id": 3, "caption": "for no image"},
                   {"image_id": 8, "id": 4, "caption": "x" * (MAX_TEXT_CHARS + 1)},
                   {"image_id": 8, "id": 5, "caption": "blue"}, {"image_id": 5, "id": 6, "caption": "of a duplicate"}]
    _coco_file(source / "captions_val2017.json", images, annotations)
    records, bad = open_coco(source)
    assert [(r.relpath, r.captions) for r in records] == [("good.jpg", ["a good one"]), ("other.jpg", ["blue"])]
    reasons = {b.ref.removeprefix("captions_val2017.json "): b.reason for b in bad}
    assert set(reasons) == {"images[1]", "images[2]", "images[3]", "images[4]", "images[5]", "images[6]",
                            "images[8]", "images[9]", "annotations[1]", "annotations[2]", "annotations[3]"}
    assert "is absolute" in reasons["images[1]"]
    assert "leaves" in reasons["images[2]"] and "'..'" in reasons["images[2]"]
    assert "symlink" in reasons["images[3]"] and "outside" in reasons["images[3]"]
    assert "already captions_val2017.json images[0]" in reasons["images[4]"]  # duplicate file_name: the later one
    assert "`file_name` is missing" in reasons["images[5]"]
    assert "not in" in reasons["images[6]"] and "missing.jpg" in reasons["images[6]"]
    assert "`id` is missing" in reasons["images[8]"] and "not an object" in reasons["images[9]"]
    assert "`caption` is int 7, not text" in reasons["annotations[1]"]
    assert "image_id 99 is not in `images`" in reasons["annotations[2]"]
    assert "over the limit" in reasons["annotations[3]"]
    assert all("\n" not in b.reason for b in bad)
    relpaths = {b.ref.removeprefix("captions_val2017.json "): b.relpath for b in bad}
    assert relpaths["images[4]"] == "good.jpg" and relpaths["images[6]"] == "missing.jpg"


def test_coco_non_string_file_name_is_a_bad_row(tmp_path):
    _image(tmp_path / "a.jpg")
    _coco_file(tmp_path / "captions_val2017.json", [_coco_image(1, "a.jpg"), _coco_image(2, ["a.jpg"])], [])
    records, bad = open_coco(tmp_path)
    assert [r.relpath for r in records] == ["a.jpg"]
    assert [(b.ref, b.relpath) for b in bad] == [("captions_val2017.json images[1]", None)]
    assert "`file_name` is list" in bad[0].reason


@pytest.mark.parametrize("text, expected", [
    ('{"images": [', "is not valid JSON"),
    ("[1, 2]", "holds a JSON list"),
    ('{"images": [], "info": {}}', "has no `annotations` list (its keys: images, info)"),
    (b"\xff\xfe\x00garbage", "not"),
])
def test_coco_unreadable_files_are_one_line_manifest_errors(tmp_path, text, expected):
    path = tmp_path / "captions_val2017.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ManifestError) as err:
        open_coco(tmp_path)
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_coco_without_a_usable_image_is_a_manifest_error_not_a_removal(tmp_path):
    _coco_file(tmp_path / "captions_val2017.json", [_coco_image(1, "gone.jpg")], _captions(1, 1))
    with pytest.raises(ManifestError) as err:
        open_coco(tmp_path)
    message = str(err.value)
    assert "has no usable images" in message and "captions_val2017.json images[0]" in message
    assert "gone.jpg" in message and "\n" not in message
    _coco_file(tmp_path / "captions_val2017.json", [_coco_image(1, "gone.jpg")],
               [{"image_id": 1, "id": 1, "bbox": [0, 0, 1, 1], "category_id": 3}])
    with pytest.raises(ManifestError, match="instances or keypoints file"):
        open_coco(tmp_path)


# --- VQAv2 ----------------------------------------------------------------------------------------


ANSWER_WORDS = ["two", "2", "two", "two", "2", "two", "three", "two", "two", "2"]


def _vqa_question(image_id: int, question_id: int, question: object = "how many?") -> dict:
    return {"image_id": image_id, "question": question, "question_id": question_id}


def _vqa_annotation(image_id: int, question_id: int, answer: str = "two", question_type: str = "how many",
                    answers: object = None) -> dict:
    # The shape of an entry in v2_mscoco_val2014_annotations.json; answers listed out of answer_id order.
    if answers is None:
        answers = [{"answer": word, "answer_confidence": "yes", "answer_id": k + 1}
                   for k, word in enumerate(ANSWER_WORDS)][::-1]
    return {"question_type": question_type, "multiple_choice_answer": answer, "answers": answers,
            "image_id": image_id, "answer_type": "number", "question_id": question_id}


def _vqa_files(folder: Path, questions: list[dict], annotations: list[dict] | None, image_set: str = "val2014"):
    _write_json(folder / f"v2_OpenEnded_mscoco_{image_set}_questions.json",
                {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                 "data_subtype": image_set, "questions": questions})
    if annotations is not None:
        _write_json(folder / f"v2_mscoco_{image_set}_annotations.json",
                    {"info": {}, "license": {}, "data_subtype": image_set, "annotations": annotations})


def test_vqav2_ten_answers_in_order_answer_is_multiple_choice_and_question_type_kept(tmp_path):
    _image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    _image(tmp_path / "000000000007.jpg", "blue")  # 2017 naming, at the top
    _vqa_files(tmp_path, [_vqa_question(42, 42000), _vqa_question(42, 42001, "is it red?"), _vqa_question(7, 7000)],
               [_vqa_annotation(7, 7000), _vqa_annotation(42, 42001, "yes", "is it", answers=["yes"] * 10),
                _vqa_annotation(42, 42000)])
    records, bad = open_vqav2(tmp_path)
    assert bad == []
    assert [(r.relpath, r.split) for r in records] == [("val2014/COCO_val2014_000000000042.jpg", "val2014"),
                                                       ("000000000007.jpg", "val2014")]
    first, second = records[0].qa
    assert first.question == "how many?" and first.answer == "two" and first.question_type == "how many"
    assert first.answers == tuple(ANSWER_WORDS) and len(first.answers) == 10
    assert (second.answer, second.question_type, second.answers) == ("yes", "is it", ("yes",) * 10)
    assert records[0].extra == {"coco_id": 42} and records[0].caption is None
    assert [r.relpath for r in open_source(str(tmp_path), source_format="vqav2")[0]] == [r.relpath for r in records]
    assert {r.split for r in open_vqav2(tmp_path, split="val")[0]} == {"val"}


def test_vqav2_uses_coco_captions_of_the_same_set(tmp_path):
    _image(tmp_path / "val2014" / "renamed.jpg")
    _coco_file(tmp_path / "annotations" / "captions_val2014.json", [_coco_image(42, "renamed.jpg")],
               _captions(42, 1))
    _vqa_files(tmp_path / "annotations", [_vqa_question(42, 1)], [_vqa_annotation(42, 1)])
    [record], bad = open_vqav2(tmp_path)
    assert bad == []
    assert record.relpath == "val2014/renamed.jpg" and record.ref == "captions_val2014.json images[0]"
    assert record.caption == "caption 0 of 42" and len(record.captions) == 5 and len(record.qa) == 1


def test_vqav2_hostile_entries_are_bad_rows_and_good_rows_survive(tmp_path):
    _image(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg")
    _image(tmp_path / "val2014" / "COCO_val2014_000000000002.jpg")
    questions = [_vqa_question(1, 10), _vqa_question(999, 20), _vqa_question(1, 30, ["not", "text"]),
                 _vqa_question(2, 40), _vqa_question(2, 50), _vqa_question(2, 60), _vqa_question(1, 10),
                 _vqa_question("1", 70), _vqa_question(2, 80)]
    annotations = [_vqa_annotation(1, 10), _vqa_annotation(999, 20), _vqa_annotation(1, 30),
                   _vqa_annotation(2, 40, answers="two"), _vqa_annotation(2, 50, answers=["two", 2]),
                   _vqa_annotation(2, 60), _vqa_annotation(2, 80, answer=None)]
    _vqa_files(tmp_path, questions, annotations)
    records, bad = open_vqav2(tmp_path)
    assert [(r.relpath, [p.question for p in r.qa]) for r in records] == [
        ("val2014/COCO_val2014_000000000001.jpg", ["how many?"]),
        ("val2014/COCO_val2014_000000000002.jpg", ["how many?"])]
    reasons = {b.ref.removeprefix("v2_OpenEnded_mscoco_val2014_questions.json "): b.reason for b in bad}
    assert set(reasons) == {f"questions[{i}]" for i in (1, 2, 3, 4, 6, 7, 8)}
    assert "image_id 999" in reasons["questions[1]"] and "COCO_val2014_000000000999.jpg" in reasons["questions[1]"]
    assert "`question` is list" in reasons["questions[2]"]
    assert "annotations[3]: `answers` is str" in reasons["questions[3]"]
    assert "`answers[1]` is int 2, not text" in reasons["questions[4]"]
    assert "already v2_OpenEnded_mscoco_val2014_questions.json questions[0]" in reasons["questions[6]"]
    assert "`image_id` is str" in reasons["questions[7]"]
    assert "`multiple_choice_answer` is missing" in reasons["questions[8]"]
    relpaths = {b.ref.rsplit(" ", 1)[1]: b.relpath for b in bad}
    assert relpaths["questions[2]"] == "val2014/COCO_val2014_000000000001.jpg"  # still listed, not "removed"


def test_vqav2_question_without_answers_and_mismatched_files(tmp_path):
    _image(tmp_path / "000000000001.jpg")
    _vqa_files(tmp_path, [_vqa_question(1, 10), _vqa_question(1, 11)], [_vqa_annotation(1, 10)])
    records, bad = open_vqav2(tmp_path)
    assert len(records[0].qa) == 1
    assert [b.ref for b in bad] == ["v2_OpenEnded_mscoco_val2014_questions.json questions[1]"]
    assert "has no answers in v2_mscoco_val2014_annotations.json" in bad[0].reason
    _vqa_files(tmp_path, [_vqa_question(1, 10)], [_vqa_annotation(1, 77)])
    with pytest.raises(ManifestError, match="none of the questions .* has answers"):
        open_vqav2(tmp_path)


def test_vqav2_without_annotations_says_where_to_go_instead(tmp_path):
    _image(tmp_path / "test2015" / "COCO_test2015_000000000001.jpg")
    _vqa_files(tmp_path, [_vqa_question(1, 10)], None, image_set="test-dev2015")
    with pytest.raises(ManifestError) as err:
        open_vqav2(tmp_path)
    message = str(err.value)
    assert "v2_mscoco_test-dev2015_annotations.json" in message and "--annotations" in message
    assert "ravlm vqa --questions" in message and "--source-format coco" in message and "\n" not in message


def test_vqav2_malformed_json_and_no_usable_question(tmp_path):
    _image(tmp_path / "000000000001.jpg")
    _vqa_files(tmp_path, [_vqa_question(1, 10)], [_vqa_annotation(1, 10)])
    questions = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    questions.write_text('{"questions": [{"image_id": 1,')
    with pytest.raises(ManifestError) as err:
        open_vqav2(tmp_path)
    assert "is not valid JSON" in str(err.value) and str(questions) in str(err.value)
    _vqa_files(tmp_path, [_vqa_question(5, 10, 3)], [_vqa_annotation(5, 10)])
    with pytest.raises(ManifestError) as err:
        open_vqav2(tmp_path)
    message = str(err.value)
    assert f"{questions} has no usable questions" in message and "questions[0]" in message and "\n" not in message


# --- dispatch -------------------------------------------------------------------------------------


def test_open_source_rejects_unknown_formats_and_options_the_format_ignores(tmp_path):
    _image(tmp_path / "a.jpg")
    with pytest.raises(UserError, match="auto, manifest, folder, coco, vqav2"):
        open_source(str(tmp_path), source_format="yolo")
    with pytest.raises(UserError, match="--annotations goes with --source-format coco or vqav2"):
        open_source(str(tmp_path), annotations=tmp_path / "x.json")
    with pytest.raises(UserError, match="--manifest goes with"):
        open_source(str(tmp_path), tmp_path / "m.csv", source_format="coco")
    with pytest.raises(UserError, match="built-in dataset"):
        open_source("easy-vqa", source_format="folder")


def test_auto_is_unchanged_and_folder_and_manifest_formats_are_explicit(tmp_path):
    _image(tmp_path / "a.jpg")
    _image(tmp_path / "b.jpg")
    _coco_file(tmp_path / "captions_val2017.json", [_coco_image(1, "a.jpg")], _captions(1, 1))
    records, bad = open_source(str(tmp_path))  # auto: no manifest, so every image, captions file ignored
    assert bad == [] and [(r.relpath, r.caption, r.split) for r in records] == [("a.jpg", None, "test"),
                                                                                 ("b.jpg", None, "test")]
    with pytest.raises(ManifestError, match="has no manifest"):
        open_source(str(tmp_path), source_format="manifest")
    (tmp_path / "manifest.csv").write_text("image,caption\nb.jpg,blue\n")
    assert [(r.relpath, r.caption) for r in open_source(str(tmp_path))[0]] == [("b.jpg", "blue")]
    assert open_source(str(tmp_path), source_format="manifest")[0] == open_source(str(tmp_path))[0]
    assert [r.relpath for r in open_source(str(tmp_path), source_format="folder")[0]] == ["a.jpg", "b.jpg"]
    assert [r.relpath for r in open_source(str(tmp_path), source_format="coco")[0]] == ["a.jpg"]


def test_vqav2_files_passed_explicitly_through_the_dispatch(tmp_path):
    _image(tmp_path / "images" / "000000000001.jpg")
    _vqa_files(tmp_path / "elsewhere", [_vqa_question(1, 10)], [_vqa_annotation(1, 10)])
    questions = tmp_path / "elsewhere" / "v2_OpenEnded_mscoco_val2014_questions.json"
    renamed = questions.rename(tmp_path / "elsewhere" / "my_questions.json")  # its data_subtype names the set
    answers = tmp_path / "elsewhere" / "v2_mscoco_val2014_annotations.json"
    [record], bad = open_source(str(tmp_path / "images"), source_format="vqav2", questions=renamed, annotations=answers)
    assert bad == [] and record.relpath == "000000000001.jpg" and record.split == "val2014"
    assert record.qa[0].answers == tuple(ANSWER_WORDS)


# --- into the store, and scored against every reference -------------------------------------------


def test_coco_and_vqav2_ingest_keep_every_caption_and_human_answer_and_eval_scores_against_them(tmp_path):
    import pyarrow as pa

    from ravlm_core.evaluate import scoring as evaluate
    from ravlm_core.schemas import (
        CAPTION_PREDICTIONS,
        CAPTION_PREDICTIONS_SCHEMA,
        IMAGES,
        QA,
        VQA_PREDICTIONS,
        VQA_PREDICTIONS_SCHEMA,
    )
    from ravlm_core.store import Store

    folder = tmp_path / "coco"
    for image_id, color in ((1, "red"), (2, "blue")):
        _image(folder / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", color)
    _coco_file(folder / "annotations" / "captions_val2014.json",
               [_coco_image(i, f"COCO_val2014_{i:012d}.jpg") for i in (1, 2)],
               [{"image_id": i, "id": 10 * i + k, "caption": f"a {c} thing number {k} on a table"}
                for i, c in ((1, "red"), (2, "blue")) for k in range(5)])
    store = Store(str(tmp_path / "lancedb"))
    summary = ingest_folder(folder, "coco", store, tmp_path / "data", source_format="coco")
    assert summary.added == 2 and summary.bad_rows == []
    images = store.read(IMAGES, columns=["member_id", "image_id", "caption", "captions", "split"]).to_pylist()
    assert all(len(r["captions"]) == 5 and r["caption"] == r["captions"][0] and r["split"] == "val2014"
               for r in images)
    # Each prediction is the *last* reference caption: a perfect caption that only every-reference scoring sees.
    rows = [{"pred_id": r["member_id"], "job_id": "j", "dataset": "coco", "split": "val2014",
             "member_id": r["member_id"], "image_id": r["image_id"], "prediction": r["captions"][-1],
             "reference": r["caption"], "neighbour_ids": [], "neighbour_scores": [], "near_duplicates": 0}
            for r in images]
    store.upsert(CAPTION_PREDICTIONS, pa.Table.from_pylist(rows, CAPTION_PREDICTIONS_SCHEMA), "pred_id")
    assert evaluate.caption_job_metrics(store, "j")["bleu4"] == pytest.approx(1.0)
    assert ingest_folder(folder, "coco", store, tmp_path / "data", source_format="coco").added == 0

    _vqa_files(folder, [_vqa_question(1, 100), _vqa_question(2, 200, "what color?")],
               [_vqa_annotation(1, 100), _vqa_annotation(2, 200, "blue", "what color",
                                                         answers=["blue"] * 8 + ["navy"] * 2)])
    summary = ingest_folder(folder, "vqa", store, tmp_path / "data", source_format="vqav2")
    assert summary.added == 2
    qa = store.read(QA, where="dataset = 'vqa'").to_pylist()
    assert sorted(len(r["answers"]) for r in qa) == [10, 10]
    # "2" is what 3 of the 10 humans said (the consensus is "two"), "navy" what 2 said.
    guesses = {"how many?": "2", "what color?": "navy"}
    rows = [{"qa_id": r["qa_id"], "question": r["question"], "question_type": r["question_type"],
             "answer": r["answer"], "prediction": guesses[r["question"]], "pred_id": r["qa_id"], "job_id": "v",
             "dataset": "vqa", "split": r["split"], "member_id": r["member_id"], "image_id": r["image_id"],
             "neighbour_ids": [], "neighbour_scores": [], "near_duplicates": 0} for r in qa]
    store.upsert(VQA_PREDICTIONS, pa.Table.from_pylist(rows, VQA_PREDICTIONS_SCHEMA), "pred_id")
    metrics = evaluate.vqa_job_metrics(store, "v")
    # Official VQA accuracy normalises "two" to "2": 7 of 10 agree with "2" (1.0); 2 of 10 with "navy" (0.6).
    assert metrics["soft_items"] == 2 and metrics["soft_accuracy"] == pytest.approx((1.0 + 0.6) / 2)
    assert metrics["accuracy"] == 0.0  # exact match against the consensus answers "two" and "blue"
