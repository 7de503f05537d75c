"""Encoders: the built-in backbones against their references, tiny random CLIP/SigLIP folders, and `load_encoder`."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ravlm_core.encoders import load_encoder
from ravlm_core.encoders.backbones import ImageBackbone, ImagePreprocessing, TextBackbone
from ravlm_core.encoders.packages import text_model_dir
from ravlm_core.encoders.runtime import inference
from ravlm_core.errors import UserError

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _natural_images() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(a) for a in (data.chelsea(), data.coffee(), data.astronaut(), data.rocket())]


def _colour_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(n)]


# --- built-in backbones -------------------------------------------------------------------------------------------

def test_efficientnet_lite0_classifies_chelsea_as_a_cat():
    from skimage import data

    backbone = ImageBackbone(ImagePreprocessing(128))
    with inference("cpu"):
        logits = backbone.model(backbone.preprocess([Image.fromarray(data.chelsea())]))  # [1, 1000]
    assert logits.argmax(dim=1).item() in IMAGENET_CATS


def _stem_variance_ratio(mean, std) -> float:
    """How far the stem's activation variance on natural images is from what its BatchNorm saw in training."""
    backbone = ImageBackbone(ImagePreprocessing(224, mean, std))
    with inference("cpu"):
        stem = backbone.model._conv_stem(backbone.preprocess(_natural_images()))  # [n, 32, 112, 112]
    ratio = stem.var(dim=(0, 2, 3)) / backbone.model._bn0.running_var
    return ratio.median().item()


def test_lite0_normalisation_matches_the_stem_batchnorm_statistics():
    # The cat test passes under either normalisation; the BatchNorm running variance tells them apart.
    assert 0.5 < _stem_variance_ratio(ImagePreprocessing(224).mean, ImagePreprocessing(224).std) < 2.0
    assert _stem_variance_ratio(IMAGENET_MEAN, IMAGENET_STD) > 3.0


def test_minilm_features_equal_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    texts = ["a red square", "What shape is in the image?", "Ein Satz auf Deutsch.", " ".join(["word"] * 400)]
    reference = SentenceTransformer(str(text_model_dir()), device="cpu").encode(texts, convert_to_numpy=True)
    with inference("cpu"):
        ours = TextBackbone().features(texts).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert not np.allclose(ours[0], ours[1])


def test_image_features_of_a_batch_equal_one_at_a_time():
    backbone = ImageBackbone(ImagePreprocessing(64))
    images = _colour_images(3)
    with inference("cpu"):
        batch = backbone.features(images)
        singles = torch.cat([backbone.features([image]) for image in images])
    assert batch.shape == (3, 1280)
    torch.testing.assert_close(batch, singles, atol=1e-4, rtol=1e-4)


# --- Hugging Face CLIP / SigLIP -----------------------------------------------------------------------------------

def _tiny_vocab() -> dict[str, int]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) + i for i, c in enumerate(letters)})
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(letters)})
    return vocab


def _save_tiny(model_type: str, folder, seed: int = 0):
    """A random 2-layer CLIP/SigLIP (hidden 32, 32×32 images, patch 8) with a hand-made BPE tokenizer."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTokenizer,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    vocab = _tiny_vocab()
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    special = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text = dict(tower, vocab_size=len(vocab), max_position_embeddings=24, **special)
    vision = dict(tower, image_size=32, patch_size=8)
    torch.manual_seed(seed)
    if model_type == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(folder, safe_serialization=True)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=24).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tiny_model(request, tmp_path_factory):
    return _save_tiny(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


def test_hf_encoder_shapes_norms_and_tag(tiny_model):
    encoder = load_encoder(tiny_model)
    images, texts = _colour_images(3), ["a red square", "a blue circle"]
    image_vectors, text_vectors = encoder.embed_images(images), encoder.embed_texts(texts)
    assert image_vectors.shape == (3, encoder.dim) and text_vectors.shape == (2, encoder.dim)
    assert image_vectors.dtype == np.float32 and text_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.vstack([image_vectors, text_vectors]), axis=1), 1.0, atol=1e-5)
    assert not np.allclose(text_vectors[0], text_vectors[1])
    assert encoder.embed_images([]).shape == (0, encoder.dim)
    model_type = json.loads((tiny_model / "config.json").read_text())["model_type"]
    assert re.fullmatch(rf"hf-{model_type}-{tiny_model.name.lower()}-[0-9a-f]{{12}}", encoder.tag)


def test_hf_encoder_is_deterministic_and_batch_invariant(tiny_model):
    first, second = load_encoder(tiny_model), load_encoder(tiny_model)
    images, texts = _colour_images(4, seed=1), ["a red square", "a green triangle", "yes"]
    np.testing.assert_array_equal(first.embed_images(images), second.embed_images(images))
    np.testing.assert_array_equal(first.embed_texts(texts), second.embed_texts(texts))
    singles = np.vstack([first.embed_images([image]) for image in images])
    np.testing.assert_allclose(first.embed_images(images), singles, atol=1e-5)
    np.testing.assert_allclose(first.embed_texts(texts), np.vstack([first.embed_texts([t]) for t in texts]), atol=1e-5)


def test_hf_tag_follows_the_weights(tiny_model, tmp_path):
    model_type = json.loads((tiny_model / "config.json").read_text())["model_type"]
    same = shutil.copytree(tiny_model, tmp_path / tiny_model.name)
    other = _save_tiny(model_type, tmp_path / "other" / tiny_model.name, seed=1)
    assert load_encoder(same).tag == load_encoder(tiny_model).tag
    assert load_encoder(other).tag != load_encoder(tiny_model).tag


def test_hf_rejects_unsupported_model_types(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="'bert' is not supported; supported: clip, siglip"):
        load_encoder(tmp_path)


# --- load_encoder -------------------------------------------------------------------------------------------------

def test_missing_hub_model_gives_a_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="no local folder nobody/no-such-model and the hub is unreachable"):
        load_encoder("nobody/no-such-model")


def test_hub_id_is_served_from_the_local_cache(tiny_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # The hub cache layout: models--<org>--<name>/refs/main names the snapshot folder holding the files.
    repo = tmp_path / "models--acme--Tiny-Model"
    shutil.copytree(tiny_model, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from_hub, from_folder = load_encoder("acme/Tiny-Model"), load_encoder(tiny_model)
    assert from_hub.tag.split("-")[2:4] == ["acme", "tiny"] and from_hub.tag[-12:] == from_folder.tag[-12:]
    np.testing.assert_array_equal(from_hub.embed_texts(["a red square"]), from_folder.embed_texts(["a red square"]))


def test_folder_without_a_model_is_rejected(tmp_path):
    with pytest.raises(UserError, match="neither encoder.json"):
        load_encoder(tmp_path)


def test_unknown_kind_is_rejected(tmp_path):
    (tmp_path / "encoder.json").write_text(json.dumps({"kind": "magic"}))
    with pytest.raises(UserError, match="unknown encoder kind 'magic'"):
        load_encoder(tmp_path)


def test_importing_the_package_and_builtin_does_not_import_torch():
    code = "import sys, ravlm_core.encoders, ravlm_core.encoders.builtin; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the optimised image path -------------------------------------------------------------------------------------

def test_folded_network_computes_the_package_network():
    backbone = ImageBackbone(ImagePreprocessing(128))
    pixels = backbone.preprocess(_natural_images() + _colour_images(2))
    with inference("cpu"):
        reference = torch.nn.functional.adaptive_avg_pool2d(backbone.model.extract_features(pixels.contiguous()), 1)
        folded = backbone.network(pixels)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.network.modules())
    torch.testing.assert_close(folded, reference.flatten(1), atol=1e-4, rtol=1e-5)


@pytest.fixture(scope="module")
def builtin_folder(tmp_path_factory):
    from ravlm_core.encoders.training import train_builtin_encoder

    images = _colour_images(8, seed=3)
    return train_builtin_encoder(images, ["a red square", "a blue circle"] * 4, tmp_path_factory.mktemp("models"),
                                 image_size=64, epochs=1, batch_size=8)


def test_builtin_vectors_stay_within_tolerance_of_the_unoptimised_torch_path(builtin_folder):
    from ravlm_core.encoders.image_graph import ONNX_FILE
    from ravlm_core.encoders.runtime import unit_rows

    encoder = load_encoder(builtin_folder)
    images = _natural_images() + _colour_images(4, seed=4)
    vectors = encoder.embed_images(images)
    assert (builtin_folder / ONNX_FILE).is_file()  # the CPU path ran the exported graph
    tower = encoder._image
    with inference("cpu"):  # the unoptimised path: the package network, unfolded, in contiguous memory
        maps = tower.model.extract_features(tower.preprocess(images).contiguous())
        reference = unit_rows(encoder._heads.image(torch.nn.functional.adaptive_avg_pool2d(maps, 1).flatten(1)))
    assert np.abs(vectors - reference).max() <= 1e-4
    reloaded = load_encoder(builtin_folder)  # the graph on disk serves the next process as it is
    np.testing.assert_allclose(reloaded.embed_images(images), vectors, atol=1e-6)
    np.testing.assert_allclose(np.vstack([encoder.embed_images([i]) for i in images]), vectors, atol=1e-5)


def test_batch_size_probe_is_cached_per_machine_and_reused(tmp_path):
    from ravlm_core.encoders.runtime import measured_batch_size

    calls: list[int] = []
    cache = tmp_path / "batch_size.json"
    chosen = measured_batch_size(calls.append, cache, candidates=(2, 4))
    assert chosen in (2, 4) and set(calls) == {2, 4}
    assert list(json.loads(cache.read_text()).values()) == [chosen]
    calls.clear()
    assert measured_batch_size(calls.append, cache, candidates=(2, 4)) == chosen and calls == []


def test_builtin_encoder_measures_its_batch_size_once(builtin_folder):
    from ravlm_core.encoders.builtin import BATCH_SIZE_FILE
    from ravlm_core.encoders.runtime import CPU_BATCH_CANDIDATES

    (builtin_folder / BATCH_SIZE_FILE).unlink(missing_ok=True)
    chosen = load_encoder(builtin_folder).batch_size
    assert chosen in CPU_BATCH_CANDIDATES and (builtin_folder / BATCH_SIZE_FILE).is_file()
    assert load_encoder(builtin_folder).batch_size == chosen


def test_hf_pixel_path_equals_the_processor_on_a_batch(tiny_model):
    encoder = load_encoder(tiny_model)
    images = _colour_images(3, seed=5)
    batched = encoder.image_processor(images=images, return_tensors="pt")["pixel_values"]
    pixels = np.stack([encoder.preprocess(image) for image in images])
    assert pixels.dtype == np.uint8
    torch.testing.assert_close(encoder.normalise(torch.from_numpy(pixels)), batched, atol=1e-6, rtol=0)
    with inference("cpu"):
        features = encoder.model.get_image_features(pixel_values=batched)
        reference = torch.nn.functional.normalize(_embedding(features), dim=-1)
    np.testing.assert_allclose(encoder.embed_images(images), reference.numpy(), atol=1e-5)
    assert encoder.model.config._attn_implementation == "sdpa"


def _embedding(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output
