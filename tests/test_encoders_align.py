"""Alignment heads: the multi-positive loss, training the built-in encoder, its saved folder, tag and spec checks."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ravlm_core.encoders import load_encoder, train_builtin_encoder
from ravlm_core.encoders.align import HeadConfig, multi_positive_loss, train_heads
from ravlm_core.encoders.builtin import BuiltinEncoder, BuiltinSpec, read_spec
from ravlm_core.errors import UserError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
FAST = dict(image_size=32, epochs=30, batch_size=32)  # 32 px keeps the backbone pass to a fraction of a second
# Heads shaped like the default built-in ones (hidden 512, dim 256), trained briefly.
TRAINED_SHAPES = HeadConfig(dim=256, hidden=512, epochs=2, batch_size=8, lr=2e-3, weight_decay=1e-4, seed=0)


def _colour_pairs(n: int = 64, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """n noisy solid-colour 64×64 images cycling through 4 colours; captions repeat 16 times each."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        base = np.array(COLOURS[name]) + rng.integers(-25, 25, 3)
        pixels = np.clip(base + rng.integers(-10, 10, (64, 64, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        captions.append(f"a {name} square")
    return images, captions


def _precision_at_16(encoder, images, captions) -> float:
    """Mean over the 4 caption queries of the share of the top-16 images carrying that caption."""
    queries = list(dict.fromkeys(captions))
    scores = encoder.embed_texts(queries) @ encoder.embed_images(images).T  # [4, n]
    top = np.argsort(-scores, axis=1)[:, :16]
    return float(np.mean([[captions[j] == query for j in row] for query, row in zip(queries, top)]))


@pytest.fixture(scope="module")
def data():
    return _colour_pairs()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    images, captions = data
    return train_builtin_encoder(images, captions, tmp_path_factory.mktemp("models"), **FAST)


# --- the loss -----------------------------------------------------------------------------------------------------

def _reference_loss(image_emb, text_emb, labels, scale):
    """Row by row: minus the mean log-probability of the row's positives, both directions, averaged."""
    logits = scale * image_emb @ text_emb.T
    total = 0.0
    for matrix in (logits, logits.T):
        log_p = matrix.log_softmax(dim=1)
        for i in range(len(labels)):
            positives = [j for j in range(len(labels)) if labels[j] == labels[i]]
            total += -log_p[i, positives].mean() / len(labels)
    return total / 2


def test_multi_positive_loss_matches_its_definition():
    generator = torch.Generator().manual_seed(0)
    image_emb = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    text_emb = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    loss = multi_positive_loss(image_emb, text_emb, labels, torch.tensor(2.0))
    torch.testing.assert_close(loss, _reference_loss(image_emb, text_emb, labels, np.exp(2.0)))


def test_multi_positive_loss_treats_same_caption_pairs_alike():
    # Pairs 0 and 1 share a caption (label 0) but their text vectors differ (say, paraphrases); both images sit
    # exactly between them. Both texts are right for both images, so the loss must pull the two images alike.
    # Plain CLIP InfoNCE (every pair its own class) pulls image 0 towards text 0 and image 1 towards text 1,
    # i.e. it pushes true positives apart. (With identical text vectors the two losses coincide.)
    generator = torch.Generator().manual_seed(0)
    text_emb = torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=1)
    middle = torch.nn.functional.normalize(text_emb[0] + text_emb[1], dim=0)
    labels = torch.tensor([0, 0, 1, 2])
    grads = []
    for loss_labels in (labels, torch.arange(4)):
        image_emb = torch.stack([middle, middle, text_emb[2], text_emb[3]]).requires_grad_(True)
        multi_positive_loss(image_emb, text_emb, loss_labels, torch.tensor(3.0)).backward()
        grads.append(image_emb.grad)
    multi, clip = grads
    torch.testing.assert_close(multi[0], multi[1])
    assert (clip[0] - clip[1]).norm() > 0.1


def test_train_heads_is_deterministic_for_a_seed():
    generator = torch.Generator().manual_seed(0)
    image_features, text_features = torch.randn(40, 12, generator=generator), torch.randn(40, 6, generator=generator)
    labels = torch.arange(40) % 5
    config = HeadConfig(dim=8, hidden=16, epochs=3, batch_size=16, lr=2e-3, weight_decay=1e-4, seed=0)
    (first, losses), (second, _) = (train_heads(image_features, text_features, labels, config) for _ in range(2))
    third, _ = train_heads(image_features, text_features, labels, dataclasses.replace(config, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.image[0].weight, third.image[0].weight)
    assert len(losses) == 3 and losses[-1] < losses[0]


# --- the trained built-in encoder ---------------------------------------------------------------------------------

def test_trained_encoder_retrieves_images_by_caption(trained, data, tmp_path):
    images, captions = data
    untrained = load_encoder(train_builtin_encoder(images, captions, tmp_path, **dict(FAST, epochs=0)))
    assert _precision_at_16(load_encoder(trained), images, captions) == 1.0
    assert _precision_at_16(untrained, images, captions) < 0.9


def test_encoder_outputs_unit_rows_of_dim(trained, data):
    encoder = load_encoder(trained)
    images, _ = data
    vectors = encoder.embed_images(images[:5])
    assert isinstance(encoder, BuiltinEncoder) and encoder.dim == 256 and vectors.shape == (5, 256)
    assert vectors.dtype == np.float32 and encoder.embed_texts([]).shape == (0, 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, np.vstack([encoder.embed_images([image]) for image in images[:5]]), atol=1e-5)


def test_saved_heads_reproduce_the_trained_heads(trained, tmp_path):
    from ravlm_core.encoders.backbones import ImageBackbone, ImagePreprocessing, TextBackbone
    from ravlm_core.encoders.builtin import save_builtin
    from ravlm_core.encoders.runtime import inference

    images, captions = _colour_pairs(8)
    texts = list(dict.fromkeys(captions))
    spec = read_spec(trained)  # the fixture's: 32 px, hidden 512, dim 256; its tag is recomputed for these heads
    with inference("cpu"):
        preprocessing = ImagePreprocessing(32, resample=spec.preprocessing.resample)
        image_features = ImageBackbone(preprocessing).features(images).clone()
        text_features = TextBackbone().features(texts).clone()
    heads, _ = train_heads(image_features, text_features[:4].repeat(2, 1), torch.arange(8) % 4, TRAINED_SHAPES)
    loaded = BuiltinEncoder(save_builtin(tmp_path / "out", spec, heads))
    with torch.no_grad():
        np.testing.assert_allclose(loaded.embed_images(images), heads.embed_images(image_features).numpy(), atol=1e-5)
        np.testing.assert_allclose(loaded.embed_texts(texts), heads.embed_texts(text_features).numpy(), atol=1e-5)


def test_new_encoders_resize_with_torch_and_an_older_spec_keeps_pil(trained, data, tmp_path):
    from ravlm_core.encoders.builtin import save_builtin
    from ravlm_core.imaging import SquarePixels

    images, _ = data
    new = BuiltinEncoder(trained)
    assert new.spec.preprocessing.resample == "bicubic-torch" == new.preprocess.resample
    # An encoder trained before the torch resampler: its spec says "bicubic" (PIL), which stays what it runs.
    older_spec = new.spec.model_copy(update={"preprocessing": new.spec.preprocessing.model_copy(
        update={"resample": "bicubic"})})
    older = BuiltinEncoder(save_builtin(tmp_path / "older", older_spec, new._heads))
    assert older.preprocess == SquarePixels(32, "bicubic") and older.tag != new.tag
    pil_pixels = np.stack([np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
                           for image in images[:4]])
    np.testing.assert_array_equal(older.embed_images(images[:4]), older.embed_pixels(pil_pixels))
    spec_json = json.loads((Path(trained) / "encoder.json").read_text())
    del spec_json["preprocessing"]["resample"]  # a spec file written before the field existed
    assert BuiltinSpec.model_validate(spec_json).preprocessing.resample == "bicubic"


def test_tag_is_stable_for_the_same_training_and_changes_with_the_data(trained, data, tmp_path):
    images, captions = data
    again = train_builtin_encoder(images, captions, tmp_path, **FAST)
    assert again.name == trained.name and again.name.startswith("builtin-") and len(again.name) == len("builtin-") + 12
    heads_mtime = (again / "heads.safetensors").stat().st_mtime_ns
    assert train_builtin_encoder(iter(images), captions, tmp_path, **FAST) == again  # a one-pass iterable works too
    assert (again / "heads.safetensors").stat().st_mtime_ns == heads_mtime  # reused, not rewritten
    changed = [Image.fromarray(255 - np.asarray(images[0]))] + images[1:]
    assert train_builtin_encoder(changed, captions, tmp_path, **FAST).name != trained.name


def test_spec_records_the_recipe(trained, data):
    spec = read_spec(trained)
    assert spec.tag == trained.name and spec.preprocessing.image_size == 32 and spec.training.n_pairs == len(data[1])
    assert spec.training.n_captions == 4 and spec.preprocessing.text_max_length == 256
    assert spec.image_backbone.model == "efficientnet-lite0" and len(spec.image_backbone.weights_sha256) == 64


# --- bad input and damaged folders --------------------------------------------------------------------------------

def test_bad_training_input_is_rejected(data, tmp_path):
    images, captions = data
    with pytest.raises(ValueError, match="got 63 images but 64 captions"):
        train_builtin_encoder(images[:-1], captions, tmp_path, **FAST)
    with pytest.raises(ValueError, match="caption row 1"):
        train_builtin_encoder(images[:2], ["a red square", " "], tmp_path, **FAST)
    with pytest.raises(TypeError, match="training image 1 is a ndarray"):
        train_builtin_encoder([images[0], np.zeros((4, 4, 3))], captions[:2], tmp_path, **FAST)


def _copy_with_spec(trained, tmp_path, edit):
    import shutil

    folder = shutil.copytree(trained, tmp_path / trained.name)
    spec = json.loads((folder / "encoder.json").read_text())
    edit(spec)
    (folder / "encoder.json").write_text(json.dumps(spec))
    return folder


def test_damaged_spec_fails_loudly(trained, tmp_path):
    unknown_key = _copy_with_spec(trained, tmp_path / "a", lambda s: s["preprocessing"].update(crop=True))
    with pytest.raises(UserError, match="crop"):
        load_encoder(unknown_key)
    unknown_kind = _copy_with_spec(trained, tmp_path / "b", lambda s: s.update(kind="magic"))
    with pytest.raises(UserError, match="unknown encoder kind 'magic'"):
        load_encoder(unknown_kind)
    edited = _copy_with_spec(trained, tmp_path / "c", lambda s: s["training"].update(seed=7))
    with pytest.raises(UserError, match="tag mismatch"):
        load_encoder(edited)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_vectors_agree_with_cpu(trained, data):
    images, captions = data
    cpu, cuda = load_encoder(trained), load_encoder(trained, device="cuda")
    texts = list(dict.fromkeys(captions))
    pairs = [(cpu.embed_images(images), cuda.embed_images(images)), (cpu.embed_texts(texts), cuda.embed_texts(texts))]
    for on_cpu, on_cuda in pairs:
        assert on_cuda.dtype == np.float32
        assert np.sum(on_cpu * on_cuda, axis=1).min() > 0.98  # bf16 autocast: close in angle, not bit-equal


def test_the_exported_text_graph_gives_the_torch_encoders_vectors_without_importing_torch(trained, tmp_path):
    from ravlm_core.encoders.text_query import export_text_query, text_query_ready

    encoder = load_encoder(trained)
    assert not text_query_ready(trained, encoder.tag)
    assert export_text_query(encoder, trained) == trained / "text_query.onnx"
    assert text_query_ready(trained, encoder.tag)
    texts = ["a red circle", "", "Ünïcode café, what colour?", "what shape is it? " * 200]  # the last is truncated
    code = ("import json, sys, numpy as np; from ravlm_core.encoders.text_query import TextQueryEncoder; "
            f"np.save(sys.argv[1], TextQueryEncoder(sys.argv[2]).embed_texts({texts!r})); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "graph.npy"), str(trained)], check=True)
    graph, torch_vectors = np.load(tmp_path / "graph.npy"), encoder.embed_texts(texts)
    assert graph.shape == torch_vectors.shape and np.abs(graph - torch_vectors).max() < 1e-5
