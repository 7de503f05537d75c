"""SmallCap: warm-started from a tiny random BERT folder (as all-MiniLM-L6-v2 ships), trained, saved with
safetensors and loaded through the generator's own loader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ravlm_core.errors import UserError
from ravlm_core.generators import GeneratorSpec, Request
from ravlm_core.generators.smallcap import (
    SmallCapConfig,
    SmallCapGenerator,
    context_captions,
)
from ravlm_core.generators.smallcap_model import context_bags, warm_started
from ravlm_core.generators.smallcap_train import train_smallcap
from tests.helpers.random_models import make_bert

COLORS = ("red", "blue", "green", "yellow")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return make_bert(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(scope="module")
def reader(bert, tmp_path_factory):
    """A decoder whose image vectors say nothing (all equal): only the retrieved captions tell the colour."""
    captions = [f"a {color} {shape}" for color in COLORS for shape in ("circle", "square") for _ in range(3)]
    neighbours = [[[c, c.replace("circle", "round shape")], [c]] for c in captions]
    vectors = np.ones((len(captions), 8), np.float32) / np.sqrt(8)
    config = SmallCapConfig(base=str(bert), n_layer=2, cross_layers=2, epochs=60, batch_size=8, lr=3e-3,
                            context_dropout=0.2)
    return train_smallcap(vectors, neighbours, captions, tmp_path_factory.mktemp("smallcap"), "colours", config)


def _generator(folder, **options):
    extra = "".join(f",{k}={v}" for k, v in options.items())
    return SmallCapGenerator(GeneratorSpec.parse(f"smallcap:{folder},max_new_tokens=6{extra}"))


def test_the_decoder_is_the_base_with_new_cross_attention_and_a_tied_head(bert):
    model, tokenizer, _ = warm_started(SmallCapConfig(base=str(bert), n_layer=2, cross_layers=1), image_dim=8)
    base = load_file(bert / "model.safetensors")
    assert len(model.lower) == 1 and len(model.upper) == 1 and model.upper[0].crossattention is not None
    assert not hasattr(model.lower[0], "crossattention")
    assert torch.equal(model.lower[0].attention.self.query.weight, base["encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(model.upper[0].output.dense.weight, base["encoder.layer.1.output.dense.weight"])
    assert torch.equal(model.embeddings.word_embeddings.weight, base["embeddings.word_embeddings.weight"])
    states = torch.randn(1, 3, 32)
    assert torch.allclose(model.logits(states), model.head(states) @ model.embeddings.word_embeddings.weight.T)
    assert tokenizer.tokenize("a red circle") == ["a", "red", "circle"]


def test_context_draws_in_turn_on_every_neighbour_and_counts_its_pieces(bert):
    neighbours = [["a dog", "a brown dog", "a dog runs"], ["a cat"], ["a dog"]]
    assert context_captions(neighbours, 10) == ["a dog", "a cat", "a brown dog", "a dog runs"]
    assert context_captions(neighbours, 2) == ["a dog", "a cat"]
    _, tokenizer, _ = warm_started(SmallCapConfig(base=str(bert), n_layer=1), image_dim=8)
    pieces, counts = context_bags(tokenizer, [["a dog", "a brown dog", "a cat"], []], limit=3)
    words = tokenizer.convert_ids_to_tokens(pieces[0].tolist())
    assert words[:2] == ["a", "dog"] and counts[0].tolist()[:2] == [3, 2] and counts[0, 2] == 1
    assert counts[1].tolist() == [0, 0, 0]  # no retrieval: all padding


def test_it_reads_the_retrieved_captions(reader):
    generator = _generator(reader, num_beams=2)
    vector = np.ones(8, np.float32) / np.sqrt(8)
    requests = [Request(None, None, [{"caption": f"a {color} circle", "captions": [f"a {color} circle"]}], vector)
                for color in COLORS]
    out = generator.generate(requests, "caption")
    assert sum(g.text == f"a {color} circle" for g, color in zip(out, COLORS)) >= 3  # chance: one
    assert out[0].prompt == "similar images show a red circle. this image shows"
    # Without retrieval the image vector is all it has, the same for every item: one caption for all.
    alone = generator.generate([Request(None, None, [], vector) for _ in COLORS], "caption")
    assert len({g.text for g in alone}) == 1 and alone[0].prompt == "this image shows"


def test_it_writes_only_word_pieces_the_kb_captions_use(reader, bert):
    generator = _generator(reader)
    used = {p for c in COLORS for p in generator.tokenizer.tokenize(f"a {c} circle a {c} square")}
    request = Request(None, None, [{"caption": "the quick brown fox jumps over the lazy dog"}], np.zeros(8, np.float32))
    text = generator.generate([request], "caption")[0].text
    assert text and set(generator.tokenizer.tokenize(text)) <= used


def test_the_model_is_safetensors_and_a_foreign_folder_is_refused(reader, bert, tmp_path):
    assert not list(reader.glob("*.bin")) and (reader / "model.safetensors").is_file()
    consensus = json.loads((reader / "consensus.json").read_text())  # n-gram frequencies of the 8 distinct captions
    assert consensus["n_docs"] == 8 and consensus["frequencies"][str(_ids(reader, "circle")[0])] == 4
    with pytest.raises(UserError, match="not a SmallCap decoder"):
        _generator(bert)
    with pytest.raises(UserError, match="smallcap writes captions"):
        _generator(reader).generate([], "vqa")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not a BERT folder"):
        warm_started(SmallCapConfig(base=str(tmp_path)), image_dim=8)
    with pytest.raises(UserError, match="tune"):
        train_smallcap(np.ones((1, 8), np.float32), [[]], ["a dog"], tmp_path, "x",
                       SmallCapConfig(base=str(bert), tune="some"))


def _ids(folder, text):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False)["input_ids"]
