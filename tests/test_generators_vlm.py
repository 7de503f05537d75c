"""The chat VLM generator drives every family the README promises (SmolVLM / Idefics3, LLaVA, Qwen2-VL) through the
same code: tiny random checkpoints, loaded by `load_generator`, prompted with and without retrieved neighbours."""
from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from ravlm_core.generators import GeneratorSpec, Request, load_generator
from tests.helpers.random_models import make_llava, make_qwen2vl, make_vlm

BUILDERS = {"smolvlm": make_vlm, "llava": make_llava, "qwen2vl": make_qwen2vl}
NEIGHBOUR_CAPTIONS = ("a red circle", "a small red circle next to a large blue square")


def _shape(colour: str, box: tuple[int, int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse(box, fill=colour)
    return image


def _thumbnail(colour: str) -> Image.Image:
    image = _shape(colour, (10, 10, 50, 50))
    image.thumbnail((32, 32))
    return image


def _requests(question: str | None) -> list[Request]:
    """Two items: one with two retrieved neighbours (captions, answers, thumbnails), one with none."""
    context = [{"caption": caption, "qa": [("what color is the shape?", "red")], "score": 0.9 - i / 10,
                "image": _thumbnail(colour)}
               for i, (caption, colour) in enumerate(zip(NEIGHBOUR_CAPTIONS, ("red", "blue")))]
    return [Request(_shape("red", (8, 8, 40, 40)), question, context),
            Request(_shape("green", (20, 12, 60, 50)), question, [])]


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def generator(request, tmp_path_factory):
    folder = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    return load_generator(GeneratorSpec.parse(f"vlm:{folder},max_new_tokens=3,context_images=1"))


@pytest.mark.parametrize("task, question", [("vqa", "what color is the shape?"), ("caption", None)])
def test_batched_generation_with_and_without_neighbours(generator, task, question, monkeypatch):
    requests = _requests(question)
    calls, generate = [], generator.model.generate

    def spy(**inputs):  # keeps what the model was given
        calls.append(inputs)
        return generate(**inputs)

    monkeypatch.setattr(generator.model, "generate", spy)
    batched = generator.generate(requests, task)
    assert len(batched) == 2 and all(isinstance(g.text, str) for g in batched)
    with_context, without = (g.prompt for g in batched)
    assert all(caption in with_context for caption in NEIGHBOUR_CAPTIONS)
    assert not any(caption in without for caption in NEIGHBOUR_CAPTIONS)
    if task == "vqa":
        assert "what color is the shape? red" in with_context and question in without
    # The model saw the query image and one neighbour's thumbnail (context_images=1), then the query image alone;
    # the processor expanded each image to the same number of placeholder tokens (every image here is square).
    image_tokens = (calls[0]["input_ids"] == generator.model.config.image_token_id).sum(dim=1).tolist()
    assert image_tokens[0] == 2 * image_tokens[1] > 0
    # Left padding is right: each item alone gives the same text and prompt as in the batch.
    alone = [generator.generate([r], task)[0] for r in requests]
    assert [(g.text, g.prompt) for g in alone] == [(g.text, g.prompt) for g in batched]
