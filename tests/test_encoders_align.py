"""Alignment heads: the multi-positive loss, training the built-in encoder, its saved folder, tag and spec checks."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ravlm_core.encoders import load_encoder, train_builtin_encoder
from ravlm_core.encoders.align import (
    AlignmentHeads,
    HeadConfig,
    HeadShape,
    multi_positive_loss,
    positive_mask,
    train_heads,
)
from ravlm_core.encoders.builtin import BuiltinEncoder, BuiltinSpec, compute_tag, read_spec
from ravlm_core.errors import UserError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
# 32 px keeps the backbone pass to a fraction of a second; augmented views have tests of their own.
FAST = dict(image_size=32, epochs=30, batch_size=32, views=0, heads=HeadShape(hidden=512), dim=256)
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

def _reference_loss(image_emb, text_emb, images, captions, scale):
    """Row by row: minus the mean log-probability of the row's positives (same image or same caption), both
    directions, averaged."""
    logits = scale * image_emb @ text_emb.T
    total = 0.0
    for matrix in (logits, logits.T):
        log_p = matrix.log_softmax(dim=1)
        for i in range(len(images)):
            positives = [j for j in range(len(images)) if images[j] == images[i] or captions[j] == captions[i]]
            total += -log_p[i, positives].mean() / len(images)
    return total / 2


def test_multi_positive_loss_matches_its_definition():
    generator = torch.Generator().manual_seed(0)
    image_emb = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    text_emb = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    # Pairs 0 and 2 are two captions of one image; pairs 1 and 4 share a caption on different images.
    images, captions = torch.tensor([0, 1, 0, 2, 3, 4]), torch.tensor([0, 1, 2, 3, 1, 5])
    loss = multi_positive_loss(image_emb, text_emb, positive_mask(images, captions), torch.tensor(2.0))
    torch.testing.assert_close(loss, _reference_loss(image_emb, text_emb, images, captions, np.exp(2.0)))


def test_positive_mask_is_same_image_or_same_caption_not_their_closure():
    # Image 0 has captions 0 and 1, image 1 has captions 1 and 2: caption 2 is no positive of image 0.
    mask = positive_mask(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 2]))
    assert mask.tolist() == [[True, True, False, False], [True, True, True, False],
                             [False, True, True, True], [False, False, True, True]]


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
        mask = positive_mask(torch.arange(4), loss_labels)
        multi_positive_loss(image_emb, text_emb, mask, torch.tensor(3.0)).backward()
        grads.append(image_emb.grad)
    multi, clip = grads
    torch.testing.assert_close(multi[0], multi[1])
    assert (clip[0] - clip[1]).norm() > 0.1


def _random_features(n_images=40, n_views=3, n_captions=5):
    generator = torch.Generator().manual_seed(0)
    views = torch.randn(n_images, n_views, 12, generator=generator)
    texts = torch.randn(n_captions, 6, generator=generator)
    pair_images = torch.arange(n_images).repeat_interleave(2)  # two captions per image
    pair_captions = torch.cat([torch.arange(n_images) % n_captions, (torch.arange(n_images) + 1) % n_captions])
    return views, texts, pair_images, pair_captions.view(2, -1).T.reshape(-1)


SMALL = HeadConfig(dim=8, hidden=16, epochs=6, batch_size=16, lr=2e-3, weight_decay=1e-4, seed=0)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_train_heads_is_deterministic_for_a_seed():
    features = _random_features()
    (first, losses, kept), (second, _, _) = (train_heads(*features, SMALL) for _ in range(2))
    third, _, _ = train_heads(*features, dataclasses.replace(SMALL, seed=1))
    assert _same(first, second) and not torch.equal(first.image[0].weight, third.image[0].weight)
    assert len(losses) == 6 and kept == 6 and losses[-1] < losses[0]


def test_image_dropout_is_seeded_leaves_the_callers_rng_alone_and_only_acts_in_training():
    features = _random_features()
    dropped = dataclasses.replace(SMALL, image_dropout=0.5)
    before = torch.random.get_rng_state()
    first, _, _ = train_heads(*features, dropped)
    assert torch.equal(torch.random.get_rng_state(), before)
    second, _, _ = train_heads(*features, dropped)
    plain, _, _ = train_heads(*features, SMALL)
    assert _same(first, second) and not _same(first, plain)
    views = features[0][:, 0]
    torch.testing.assert_close(first.embed_images(views), first.embed_images(views))  # eval mode: no dropout
    assert not torch.equal(first.train().embed_images(views), first.embed_images(views))


def test_a_residual_text_head_starts_as_the_sentence_encoders_own_space():
    texts = torch.randn(5, 6)
    heads = AlignmentHeads(12, 6, 0, 6, text_head="residual")
    torch.testing.assert_close(heads.embed_texts(texts), torch.nn.functional.normalize(texts, dim=1))
    assert set(heads.state_dict()) == set(AlignmentHeads(12, 6, 0, 6).state_dict())  # a Linear's keys and shapes
    with pytest.raises(ValueError, match="width 6"):
        AlignmentHeads(12, 6, 0, 8, text_head="residual")


def test_train_heads_keeps_the_best_validated_epoch_and_stops_after_patience():
    features = _random_features()
    scores = iter([0.1, 0.5, 0.9, 0.2, 0.3, 0.95])
    heads, losses, kept = train_heads(*features, SMALL, validate=lambda heads: next(scores), patience=2)
    assert kept == 3 and len(losses) == 5  # epochs 4 and 5 did not beat epoch 3: stopped before epoch 6
    # Validation draws no randomness, so epoch 3's weights are what three epochs without it give.
    three_epochs, _, _ = train_heads(*features, dataclasses.replace(SMALL, epochs=3))
    assert _same(heads, three_epochs)


def test_train_heads_sees_the_augmented_views():
    views, texts, pair_images, pair_captions = _random_features()
    plain, _, _ = train_heads(views[:, :1], texts, pair_images, pair_captions, SMALL)
    augmented, _, _ = train_heads(views, texts, pair_images, pair_captions, SMALL)
    assert not torch.equal(plain.image[0].weight, augmented.image[0].weight)


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
    heads, _, _ = train_heads(image_features[:, None], text_features, torch.arange(8), torch.arange(8) % 4,
                              TRAINED_SHAPES)
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
    training = spec.training
    assert training.n_images == 64 and training.heldout_images == 10 and training.holdout == 0.15
    assert 1 <= training.best_epoch <= 30 and training.views == 0 and training.augmentation is None
    # Four colours, 16 images each: a caption query finds its colour's images, so train and held-out recall agree.
    assert training.train_recall["t2i_hit@1"] == 1.0 and training.heldout_recall["t2i_hit@1"] == 1.0
    assert set(training.heldout_recall) == {f"{d}_{m}@{k}" for d in ("t2i", "i2t") for m in ("recall", "hit")
                                            for k in (1, 5, 10)}


def test_every_caption_of_an_image_is_a_positive(data, tmp_path):
    # Each image gets its colour's name in two phrasings; an image's only caption naming the colour alone
    # would leave the paraphrase unseen. Both phrasings must find the colour's images.
    images, captions = data
    both = [[caption, caption.replace("a ", "one ", 1).replace("square", "block")] for caption in captions]
    folder = train_builtin_encoder(images, both, tmp_path, **FAST)
    training = read_spec(folder).training
    assert training.n_pairs == 128 and training.n_captions == 8 and training.n_images == 64
    assert _precision_at_16(load_encoder(folder), images, [c[1] for c in both]) == 1.0


def test_too_few_images_train_every_epoch_with_no_held_out_recall(data, tmp_path):
    images, captions = data
    training = read_spec(train_builtin_encoder(images[:12], captions[:12], tmp_path, **dict(FAST, epochs=5))).training
    assert training.heldout_images == 0 and training.heldout_recall is None and training.best_epoch == 5
    assert training.train_recall is not None


def test_specs_written_before_the_recall_fields_keep_their_tag(trained):
    spec = read_spec(trained)
    legacy = spec.model_copy(update={"training": spec.training.model_copy(update={
        name: None for name in ("n_images", "views", "augmentation", "holdout", "heldout_images", "best_epoch",
                                "train_recall", "heldout_recall", "text_head", "image_dropout")})})
    fields = json.loads(legacy.model_dump_json())
    for name in list(fields["training"]):
        if fields["training"][name] is None and name != "final_loss":
            del fields["training"][name]  # as an older release wrote it: the keys absent
    state = load_file(str(trained / "heads.safetensors"))
    assert compute_tag(BuiltinSpec.model_validate(fields), state) == compute_tag(legacy, state)
    assert compute_tag(legacy, state) != compute_tag(spec, state)


def test_augmented_views_are_seeded_vary_geometry_and_keep_colours(data):
    from ravlm_core.encoders.training import augmenter

    images, _ = data
    red = [images[0], images[4]]  # "a red square" images
    first, again, other = augmenter(32, 0)(red), augmenter(32, 0)(red), augmenter(32, 1)(red)
    assert first.shape == (2, 32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Brightness and noise move the values, never the hue: red stays the dominant channel by far.
    centre = first[:, 8:24, 8:24].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 3 * centre[1] and centre[0] > 3 * centre[2]


def test_retrieval_recall_is_ir_recall_beside_hit_rate():
    from ravlm_core.encoders.training import retrieval_recall

    class Identity:  # scores are the dot products of the given features
        embed_images = embed_texts = staticmethod(lambda x: x)

    # Caption 0 describes images 0 and 1, caption 1 image 2. Caption 0 ranks image 0, then 2, then 1.
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[1.0, 0.0], [0.0, 0.2], [0.6, 0.8]])
    recall = retrieval_recall(Identity(), images, texts, [[0], [0], [1]])
    assert recall["t2i_hit@1"] == 1.0  # both captions find a relevant image first
    assert recall["t2i_recall@1"] == 0.75  # caption 0 found one of its two, caption 1 its one
    assert recall["t2i_recall@5"] == 1.0  # K past the 3 images: everything is found
    assert recall["i2t_hit@1"] == pytest.approx(2 / 3, abs=1e-4)  # image 1 is nearer caption 1 than its own


# --- bad input and damaged folders --------------------------------------------------------------------------------

def test_bad_training_input_is_rejected(data, tmp_path):
    images, captions = data
    with pytest.raises(ValueError, match="got 63 images but 64 captions"):
        train_builtin_encoder(images[:-1], captions, tmp_path, **FAST)
    with pytest.raises(ValueError, match="caption row 1"):
        train_builtin_encoder(images[:2], ["a red square", " "], tmp_path, **FAST)
    with pytest.raises(ValueError, match="caption row 0"):
        train_builtin_encoder(images[:2], [[], ["a red square"]], tmp_path, **FAST)
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


def test_status_shows_train_and_held_out_recall(trained, tmp_path):
    from flows.cli.render import encoder_recall
    from ravlm_core.query.status import store_status
    from ravlm_core.store import Store

    models = tmp_path / "models"
    models.mkdir()
    (models / "builtin.json").write_text(json.dumps({"model_dir": str(trained)}))
    encoder = store_status(Store(str(tmp_path / "lancedb")), models)["encoder"]
    training = read_spec(trained).training
    assert encoder["model_tag"] == trained.name and encoder["heldout_images"] == 10
    assert encoder["train_recall"] == training.train_recall and encoder["heldout_recall"] == training.heldout_recall
    line = encoder_recall(encoder)
    assert f"held-out (10 images, epoch {training.best_epoch})" in line
    assert f"t2i@1 {training.heldout_recall['t2i_recall@1']:.3f}" in line


def test_the_heads_are_chosen_on_held_out_recall_and_a_residual_text_head_round_trips(data, tmp_path, caplog):
    from ravlm_core.encoders.training import HEAD_MARGIN

    images, captions = data
    candidates = (HeadShape(hidden=512), HeadShape(), HeadShape(text_head="residual", image_dropout=0.7))
    with caplog.at_level("INFO", logger="ravlm_core.encoders.training"):
        folder = train_builtin_encoder(images, captions, tmp_path, **dict(FAST, heads=candidates, dim=None))
    scores = dict(re.findall(r"built-in encoder: (.+): held-out score ([\d.]+)", caplog.text))
    assert set(scores) == set(map(str, candidates))
    kept = candidates[0]
    for candidate in candidates[1:]:
        if float(scores[str(candidate)]) > float(scores[str(kept)]) + HEAD_MARGIN:
            kept = candidate
    training = read_spec(folder).training
    assert (training.hidden, training.text_head, training.image_dropout) == dataclasses.astuple(kept)
    residual = train_builtin_encoder(images, captions, tmp_path, **dict(FAST, heads=candidates[2], dim=None))
    encoder = load_encoder(residual)
    assert read_spec(residual).training.text_head == "residual" and encoder.dim == 384
    assert encoder.embed_texts(["a red square"]).shape == (1, 384)
    assert _precision_at_16(encoder, images, captions) > 0.8  # hides colour features: see HEAD_CANDIDATES
