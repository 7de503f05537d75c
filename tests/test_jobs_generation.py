"""Bulk generation jobs with real model code: tiny random BLIP / chat VLM / SmallCap, saved and loaded through the
same loaders a user's checkpoint goes through, over a small ingested store with hand-made vectors."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from ravlm_core.generators import GenerationJob, GeneratorSpec, generator_tag
from ravlm_core.ids import text_id
from ravlm_core.ingest.membership import memberships_of
from ravlm_core.jobs import captioning, parts, vqa
from ravlm_core.retrieval.knowledge import load_knowledge_base
from ravlm_core.schemas import (
    CAPTION_PREDICTIONS,
    IMAGES,
    MEMBERSHIPS,
    QA,
    VQA_PREDICTIONS,
    image_vectors_table,
    question_vectors_table,
    vector_schema,
)
from tests.helpers.random_models import make_bert, make_blip, make_vlm
from tests.helpers.stores import ingest_folder

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30)}
SHAPES = ("circle", "square")
ALL = "0000:g"  # every member id: one part


def _draw(color: str, shape: str, size: int, offset: int) -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    box = (offset, offset, offset + size, offset + size)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLORS[color])
    return image


@pytest.fixture(scope="module")
def kb_store(tmp_path_factory):
    """Train: every colour x shape twice; test: one of each colour. Image vectors encode the colour (and a little
    shape), so a test image's neighbours are the train images of its colour."""
    from ravlm_core.store import Store

    root = tmp_path_factory.mktemp("gen")
    folder = root / "src"
    (folder / "images").mkdir(parents=True)
    rows = []
    for split, sizes in (("train", (20, 30)), ("test", (26,))):
        for color in COLORS:
            for shape in SHAPES if split == "train" else ("circle",):
                for n, size in enumerate(sizes):
                    name = f"images/{split}-{color}-{shape}-{n}.png"
                    _draw(color, shape, size, 8 + n).save(folder / name)
                    rows.append({"image": name, "split": split, "caption": f"a {color} {shape}",
                                 "question": "what color is the shape?", "answer": color})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    store = Store(str(root / "lancedb"))
    ingest_folder(folder, "shapes", store, root / "data", shard_size=5)
    images = store.read(IMAGES, columns=["image_id", "caption"]).to_pylist()
    labels = memberships_of(store, [r["image_id"] for r in images])
    vectors = []
    for row in images:
        color, shape = row["caption"].split()[1:]
        v = np.zeros(8, np.float32)
        v[list(COLORS).index(color)] = 1.0
        v[3 + SHAPES.index(shape)] = 0.3
        vectors.append(v / np.linalg.norm(v))
    table = pa.Table.from_pydict(
        {"image_id": [r["image_id"] for r in images], "vector": vectors,
         "memberships": [labels[r["image_id"]] for r in images], "model_tag": ["t"] * len(images),
         "embedded_at": [None] * len(images)}, schema=vector_schema(8, "image_id", MEMBERSHIPS))
    store.upsert(image_vectors_table("t"), table, "image_id")
    questions = sorted(set(store.read(QA, columns=["question"]).column("question").to_pylist()))
    store.upsert(question_vectors_table("q"), pa.Table.from_pydict(
        {"text_id": [text_id(q) for q in questions], "vector": [np.eye(8, dtype=np.float32)[7]] * len(questions),
         "model_tag": ["q"] * len(questions), "embedded_at": [None] * len(questions)},
        schema=vector_schema(8, "text_id")), "text_id")
    kb = load_knowledge_base(store, "t", "q", [("shapes", "train")])
    models = {"blip-caption": make_blip(root / "blip-caption", "caption"), "blip-vqa": make_blip(root / "blip-vqa", "vqa"),
              "vlm": make_vlm(root / "vlm")}
    return store, kb, models


def _job(name: str, spec: str, use_retrieval: bool = True, model_dir: str | None = None) -> GenerationJob:
    parsed = GeneratorSpec.parse(spec)
    return GenerationJob(f"{name}-{'rag' if use_retrieval else 'norag'}", parsed,
                         generator_tag(parsed, model_dir), use_retrieval, model_dir)


class Spy:
    """Wraps a model's generate() to keep the token ids it was actually given."""

    def __init__(self, model, fail_after: int | None = None):
        self.model, self.original, self.calls, self.fail_after = model, model.generate, [], fail_after

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("killed mid-job")
        self.calls.append(kwargs.get("input_ids"))
        return self.original(*args, **kwargs)


def _spy(monkeypatch, job: GenerationJob, fail_after: int | None = None):
    generator = parts.cached_generator(job.spec, job.model_dir, "cpu")
    spy = Spy(generator.model, fail_after)
    monkeypatch.setattr(generator.model, "generate", spy)
    return generator, spy


def _rows(store, table, job):
    return store.read(table, where=f"job_id = '{job.job_id}'").to_pylist()


def test_blip_captions_are_prompted_with_the_neighbours_captions_and_not_without_retrieval(kb_store, monkeypatch):
    store, kb, models = kb_store
    with_rag = _job("blip-cap", f"blip:{models['blip-caption']},max_new_tokens=4")
    generator, spy = _spy(monkeypatch, with_rag)
    result = captioning.run_caption_part(store, kb, "shapes", "test", ALL, with_rag, k=2)
    rows = _rows(store, CAPTION_PREDICTIONS, with_rag)
    assert result.n_items == result.n_new == len(rows) == 3
    for row in rows:
        color = row["reference"].split()[1]
        # The model's own input ids hold the neighbours' captions: its colour, nothing else.
        received = " ".join(generator.processor.tokenizer.decode(ids, skip_special_tokens=True)
                            for call in spy.calls for ids in call)
        assert f"a {color} circle" in row["prompt"]  # its two nearest: the train circles of its colour
        assert not any(other in row["prompt"] for other in COLORS if other != color)
        assert color in received
        assert row["generator"] == with_rag.tag and row["kb_version"] == kb.fingerprint
        assert json.loads(row["generator_spec"])["model"] == str(models["blip-caption"])
        assert len(row["neighbour_ids"]) == 2 and row["variant"] == "blip"
    without = _job("blip-cap", f"blip:{models['blip-caption']},max_new_tokens=4", use_retrieval=False)
    spy.calls.clear()
    captioning.run_caption_part(store, kb, "shapes", "test", ALL, without, k=2)
    for row in _rows(store, CAPTION_PREDICTIONS, without):
        assert row["prompt"] == "this image shows" and row["neighbour_ids"] == [] and row["variant"] == "blip-no-retrieval"
    received = " ".join(generator.processor.tokenizer.decode(ids, skip_special_tokens=True)
                        for call in spy.calls for ids in call)
    assert not any(color in received for color in COLORS)


def test_chat_vlm_answers_with_the_neighbours_answers_and_thumbnails_in_its_prompt(kb_store, monkeypatch):
    store, kb, models = kb_store
    job = _job("vlm-vqa", f"vlm:{models['vlm']},max_new_tokens=3,context_images=1,batch_size=2")
    generator, spy = _spy(monkeypatch, job)
    vqa.run_vqa_part(store, kb, "shapes", "test", ALL, job, k=2)
    rows = _rows(store, VQA_PREDICTIONS, job)
    assert len(rows) == 3 and len(spy.calls) == 2  # two batches: 2 + 1 items, left-padded together
    image_token = generator.processor.tokenizer.convert_tokens_to_ids("<image>")
    for row in rows:
        assert f"what color is the shape? {row['answer']}" in row["prompt"]  # the neighbours' answers
        assert row["prompt"].count("<image>") == 2  # the query image and one neighbour's thumbnail
    received = [generator.processor.tokenizer.decode(ids, skip_special_tokens=False) for call in spy.calls
                for ids in call]
    assert all(f"shape? {c}" in " ".join(received) for c in COLORS)
    assert all((ids == image_token).sum() > 0 for call in spy.calls for ids in call)
    assert all(call[:, -1].tolist() == call[:1, -1].tolist() * len(call) for call in spy.calls)  # left padding


def test_blip_vqa_and_a_head_mismatch_is_one_clear_error(kb_store):
    store, kb, models = kb_store
    job = _job("blip-vqa", f"blip:{models['blip-vqa']},max_new_tokens=3")
    assert vqa.run_vqa_part(store, kb, "shapes", "test", ALL, job, k=2).n_new == 3
    assert GeneratorSpec.parse(f"blip:{models['blip-vqa']}").serves("vqa")
    assert not GeneratorSpec.parse(f"blip:{models['blip-vqa']}").serves("caption")
    wrong = _job("blip-wrong", f"blip:{models['blip-vqa']}")
    with pytest.raises(Exception, match="BLIP vqa model"):
        captioning.run_caption_part(store, kb, "shapes", "test", ALL, wrong, k=2)


def test_a_job_killed_mid_way_resumes_without_losing_or_duplicating_rows(kb_store, monkeypatch):
    store, kb, models = kb_store
    job = _job("vlm-resume", f"vlm:{models['vlm']},max_new_tokens=2,batch_size=1")
    _, spy = _spy(monkeypatch, job, fail_after=2)
    with pytest.raises(RuntimeError, match="killed"):
        captioning.run_caption_part(store, kb, "shapes", "test", ALL, job, k=2)
    assert len(_rows(store, CAPTION_PREDICTIONS, job)) == 2  # every finished batch is committed
    spy.fail_after = None
    result = captioning.run_caption_part(store, kb, "shapes", "test", ALL, job, k=2)
    rows = _rows(store, CAPTION_PREDICTIONS, job)
    assert result.n_items == 1 and len(rows) == 3 and len({r["member_id"] for r in rows}) == 3
    assert captioning.run_caption_part(store, kb, "shapes", "test", ALL, job, k=2).n_items == 0


def test_batched_output_equals_one_at_a_time(kb_store):
    store, kb, models = kb_store
    outputs = {}
    for batch_size in (1, 3):
        for name in ("blip-caption", "vlm"):
            kind = "blip" if name.startswith("blip") else "vlm"
            job = _job(f"{name}-b{batch_size}", f"{kind}:{models[name]},max_new_tokens=4,batch_size={batch_size}")
            captioning.run_caption_part(store, kb, "shapes", "test", ALL, job, k=3)
            outputs[(name, batch_size)] = {r["member_id"]: r["prediction"] for r in _rows(store, CAPTION_PREDICTIONS, job)}
    for name in ("blip-caption", "vlm"):
        assert outputs[(name, 1)] == outputs[(name, 3)]


def test_smallcap_trains_on_the_kb_and_captions_with_and_without_retrieval(kb_store, tmp_path):
    from ravlm_core.generators.smallcap import SmallCapConfig

    store, kb, _ = kb_store
    config = SmallCapConfig(base=str(make_bert(tmp_path / "bert")), n_layer=2, cross_layers=2, epochs=40, batch_size=4,
                            lr=3e-3, context_dropout=0.3)
    folder = captioning.train_smallcap_for(store, kb, 2, tmp_path, "cpu", config)
    assert captioning.train_smallcap_for(store, kb, 2, tmp_path, "cpu", config) == folder  # cached
    assert not list(folder.glob("*.bin")) and (folder / "model.safetensors").is_file()
    for use_retrieval in (True, False):
        job = _job("smallcap", "smallcap,max_new_tokens=6", use_retrieval, str(folder))
        captioning.run_caption_part(store, kb, "shapes", "test", ALL, job, k=2)
        rows = _rows(store, CAPTION_PREDICTIONS, job)
        assert len(rows) == 3
        assert all(r["prediction"].startswith("a ") for r in rows)  # it learnt the captions' form
        if use_retrieval:
            assert all(r["prompt"].startswith("similar images show a ") for r in rows)
            # With the neighbours' captions (its own colour) in the prompt it names the colour.
            assert sum(r["reference"].split()[1] in r["prediction"] for r in rows) >= 2
        else:
            assert all(r["prompt"] == "this image shows" for r in rows)
