"""Random-weight checkpoints load through the generic from_pretrained path, tokenise English and generate."""
from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    BlipProcessor,
)

from tests.helpers.random_models import make_blip, make_llava, make_qwen2vl, make_vlm

ENGLISH = "What color is the shape? Is there a blue triangle? yes no 0 1 2 3 The quick brown fox jumps over a lazy dog."


def shape_image(colour: str, size: tuple[int, int]) -> Image.Image:
    """A filled ellipse on white; sizes differ from the model's so the processors must resize."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse([4, 4, size[0] - 4, size[1] - 4], fill=colour)
    return image


IMAGES = [shape_image("red", (48, 40)), shape_image("blue", (70, 64))]


def assert_safetensors_only(folder):
    assert list(folder.glob("*.safetensors")), "weights must be saved as safetensors"
    assert not list(folder.glob("*.bin")), "no pickled weights"


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return make_vlm(tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="module")
def vlm(vlm_dir):
    processor = AutoProcessor.from_pretrained(vlm_dir)
    processor.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
    return processor, AutoModelForImageTextToText.from_pretrained(vlm_dir)


@pytest.mark.parametrize(
    "task, model_class", [("caption", BlipForConditionalGeneration), ("vqa", BlipForQuestionAnswering)]
)
def test_blip_loads_and_generates(tmp_path, task, model_class):
    folder = make_blip(tmp_path / task, task)
    assert_safetensors_only(folder)
    processor = BlipProcessor.from_pretrained(folder)
    model = model_class.from_pretrained(folder)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)

    # Different-length texts: caption prefixes or questions, padded into one batch.
    if task == "caption":
        texts = ["a photo of", "a picture of a small red"]
    else:
        texts = ["what color is it?", "is there a blue triangle?"]
    inputs = processor(images=IMAGES, text=texts, return_tensors="pt", padding=True)
    assert not inputs["attention_mask"].all()
    out = model.generate(**inputs, max_new_tokens=4)
    assert out.shape[0] == 2
    if task == "caption":  # the prefix is kept: BLIP swaps [CLS] for bos and drops the final [SEP]
        prefix = inputs["input_ids"][1, 1:-1]
        assert torch.equal(out[1, 1 : 1 + len(prefix)], prefix)
    assert all(isinstance(s, str) for s in processor.batch_decode(out, skip_special_tokens=True))

    if task == "caption":  # unconditional captioning starts from bos alone
        out = model.generate(**processor(images=IMAGES, return_tensors="pt"), max_new_tokens=4)
        assert out.shape[0] == 2 and out.shape[1] <= 5
        assert (out[:, 0] == model.config.text_config.bos_token_id).all()


def test_blip_image_features_depend_on_the_image(tmp_path):
    folder = make_blip(tmp_path, "caption")
    processor, model = BlipProcessor.from_pretrained(folder), BlipForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        features = model.vision_model(**processor(images=IMAGES, return_tensors="pt")).last_hidden_state
    assert (features[0] - features[1]).abs().max() > 1e-3


def test_blip_tokenizer_keeps_english_words(tmp_path):
    tokenizer = BlipProcessor.from_pretrained(make_blip(tmp_path, "caption")).tokenizer
    ids = tokenizer(ENGLISH, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.tokenize("what color is the shape?") == ["what", "color", "is", "the", "shape", "?"]
    assert tokenizer.decode(ids) == tokenizer.backend_tokenizer.normalizer.normalize_str(ENGLISH).replace(" ?", "?")


def test_vlm_tokenizer_round_trips_english(vlm):
    tokenizer = vlm[0].tokenizer
    ids = tokenizer(ENGLISH, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == ENGLISH
    # Trained merges give roughly a token per word, not one per byte.
    assert len(ids) < 1.5 * len(ENGLISH.split())
    for special in ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]:
        assert len(tokenizer(special, add_special_tokens=False)["input_ids"]) == 1


def test_vlm_saves_safetensors_and_consistent_config(vlm_dir, vlm):
    processor, model = vlm
    assert_safetensors_only(vlm_dir)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert model.config.image_token_id == processor.image_token_id
    vision = model.config.vision_config
    assert processor.image_seq_len == (vision.image_size // vision.patch_size) ** 2 // model.config.scale_factor**2


def test_vlm_chat_template_has_question_and_images(vlm):
    processor, _ = vlm
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same shape?"}]},
        {"role": "assistant", "content": "no"},
        {"role": "user", "content": [{"type": "text", "text": "Is there a blue triangle?"}]},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>User:<image><image>Same shape?<end_of_utterance>\n"
        "Assistant: no<end_of_utterance>\n"
        "User: Is there a blue triangle?<end_of_utterance>\n"
        "Assistant:"
    )


def test_vlm_generates_a_left_padded_batch(vlm):
    processor, model = vlm
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the shape?"}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                      {"type": "text", "text": "Is there a blue triangle in both pictures?"}]}],
    ]
    texts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    inputs = processor(text=texts, images=[[IMAGES[0]], IMAGES], return_tensors="pt", padding=True)
    mask = inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[:, -1].all(), "the shorter prompt is padded on the left"
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [processor.image_seq_len, 2 * processor.image_seq_len]

    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > inputs["input_ids"].shape[1]
    # Batching must not change an answer: the first prompt alone gives the same tokens.
    alone = processor(text=texts[:1], images=[[IMAGES[0]]], return_tensors="pt")
    out_alone = model.generate(**alone, max_new_tokens=4, do_sample=False)
    assert torch.equal(out_alone[0, alone["input_ids"].shape[1]:], out[0, inputs["input_ids"].shape[1]:])


def test_make_vlm_is_deterministic(tmp_path):
    folders = [make_vlm(tmp_path / "a", seed=0), make_vlm(tmp_path / "b", seed=0), make_vlm(tmp_path / "c", seed=1)]
    first, again, other = (load_file(f / "model.safetensors") for f in folders)
    assert (folders[0] / "tokenizer.json").read_text() == (folders[1] / "tokenizer.json").read_text()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("build, image_token, tokens_per_image", [
    (make_llava, "<image>", 16),  # (64 / 16)^2 patches; the "default" strategy drops CLIP's CLS
    (make_qwen2vl, "<|image_pad|>", 4),  # 64 px squared down to 32 px: 4 x 4 patches of 8 px, merged 2 x 2
])
def test_llava_and_qwen2vl_agree_with_their_processors_and_are_deterministic(tmp_path, build, image_token,
                                                                             tokens_per_image):
    folders = [build(tmp_path / "a"), build(tmp_path / "b"), build(tmp_path / "c", seed=1)]
    assert_safetensors_only(folders[0])
    processor = AutoProcessor.from_pretrained(folders[0])
    model = AutoModelForImageTextToText.from_pretrained(folders[0])
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    tokenizer = processor.tokenizer
    assert model.config.image_token_id == processor.image_token_id == tokenizer.convert_tokens_to_ids(image_token)
    ids = tokenizer(ENGLISH, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == ENGLISH and len(ids) < 1.5 * len(ENGLISH.split())
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[shape_image("red", (64, 64))]], return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == tokens_per_image

    first, again, other = (load_file(f / "model.safetensors") for f in folders)
    assert (folders[0] / "tokenizer.json").read_text() == (folders[1] / "tokenizer.json").read_text()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_unknown_size_or_task_fails(tmp_path):
    with pytest.raises(ValueError, match="size"):
        make_vlm(tmp_path, size="huge")
    with pytest.raises(ValueError, match="task"):
        make_blip(tmp_path, task="retrieval")


@pytest.mark.slow
@pytest.mark.parametrize("build, model_class, low, high", [
    (lambda d: make_blip(d, "caption", "bench"), BlipForConditionalGeneration, 220e6, 230e6),
    (lambda d: make_blip(d, "vqa", "bench"), BlipForQuestionAnswering, 355e6, 370e6),
    (lambda d: make_vlm(d, "bench"), AutoModelForImageTextToText, 250e6, 265e6),
])
def test_bench_sizes_have_documented_parameter_counts(tmp_path, build, model_class, low, high):
    folder = build(tmp_path)
    assert_safetensors_only(folder)
    model = model_class.from_pretrained(folder)
    assert low < sum(p.numel() for p in model.parameters()) < high
