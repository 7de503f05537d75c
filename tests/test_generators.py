"""Generator specs as data, prompt templates, and the generation job's identity."""
import json

import pytest

from ravlm_core.errors import UserError
from ravlm_core.generators import GenerationJob, GeneratorSpec, generator_tag, without_retrieval
from ravlm_core.generators.prompts import context_block, load_template, render


def test_spec_strings_parse_to_fields_and_aliases_name_the_baselines():
    spec = GeneratorSpec.parse("vlm:/models/smol,max_new_tokens=32,context_images=2,num_beams=3")
    assert (spec.kind, spec.model, spec.max_new_tokens, spec.context_images, spec.num_beams) == (
        "vlm", "/models/smol", 32, 2, 3)
    assert GeneratorSpec.parse("fusion").kind == "builtin-fusion"
    assert GeneratorSpec.parse("voting").kind == "builtin-vote"
    assert GeneratorSpec.parse("consensus").kind == "builtin-transfer"
    assert GeneratorSpec.parse("smallcap").model == ""


def test_spec_from_a_json_file(tmp_path):
    path = tmp_path / "gen.json"
    path.write_text(json.dumps({"kind": "blip", "model": "Salesforce/blip-image-captioning-base", "num_beams": 3}))
    spec = GeneratorSpec.parse(str(path))
    assert spec.kind == "blip" and spec.num_beams == 3 and spec.model.startswith("Salesforce/")


@pytest.mark.parametrize("text, message", [
    ("gpt5", "unknown generator kind 'gpt5'"),
    ("blip", "needs a model"),
    ("vlm:/m,temperature=0.7", "unknown field(s) temperature"),
    ("vlm:/m,max_new_tokens=lots", "max_new_tokens must be a whole number"),
    ("vlm:/m,max_new_tokens=0", "max_new_tokens must be at least 1"),
    ("vlm:/m,beams", "is not key=value"),
    ("vlm:/m,dtype=int8", "dtype 'int8'"),
])
def test_bad_specs_are_one_line_user_errors(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GeneratorSpec.parse(text)


def test_jobs_name_their_variant_and_the_baselines_made_of_retrieval_have_no_run_without():
    fusion = GeneratorSpec.parse("builtin-fusion")
    assert GenerationJob("j", fusion, "t", use_retrieval=False).variant == "fusion-no-retrieval"
    assert GenerationJob("j", GeneratorSpec.parse("transfer"), "t").variant == "consensus"
    assert GenerationJob("j", GeneratorSpec.parse("nearest-caption"), "t").variant == "nearest-caption"
    assert GenerationJob("j", GeneratorSpec.parse("vlm:/m"), "t", use_retrieval=False).variant == "vlm-no-retrieval"
    for spec, why in (("voting", "nothing to vote with"), ("transfer", "nothing to transfer"),
                      ("nearest-caption", "itself a search")):
        with pytest.raises(UserError, match=f"has no --no-retrieval run: .*{why}"):
            GenerationJob("j", GeneratorSpec.parse(spec), "t", use_retrieval=False)
    assert without_retrieval(fusion) is None and without_retrieval(GeneratorSpec.parse("smallcap")) is None
    assert GeneratorSpec.parse("nearest-caption").serves("caption")
    assert not GeneratorSpec.parse("nearest-caption").serves("vqa")
    job = GenerationJob("j", GeneratorSpec.parse("vlm:/m,num_beams=2"), "t", True, "/w")
    assert GenerationJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_tags_change_with_every_field_and_with_the_prompt_text(tmp_path):
    template = tmp_path / "prompt.txt"
    template.write_text("{context}Q: {question}")
    base = GeneratorSpec.parse("smallcap")
    tags = {generator_tag(base), generator_tag(GeneratorSpec.parse("smallcap,max_new_tokens=5")),
            generator_tag(GeneratorSpec.parse(f"smallcap,prompt={template}"))}
    assert len(tags) == 3 and all(t.startswith("smallcap-") for t in tags)
    before = generator_tag(GeneratorSpec.parse(f"smallcap,prompt={template}"))
    template.write_text("{context}Caption: ")
    assert generator_tag(GeneratorSpec.parse(f"smallcap,prompt={template}")) != before
    assert generator_tag(base) == generator_tag(GeneratorSpec.parse("smallcap"))


def test_context_blocks_hold_the_neighbours_captions_and_answers_and_vanish_without_them():
    neighbours = [{"caption": "a red circle", "qa": [("what color is the shape?", "red")]},
                  {"caption": "a red circle", "qa": [("what color is the shape?", "red")]},
                  {"caption": "a blue square", "qa": []}]
    vlm = context_block("vlm", neighbours, "vqa")
    assert "a red circle - what color is the shape? red" in vlm and "a blue square" in vlm
    assert context_block("blip", neighbours, "caption") == "similar images: a red circle. a blue square. "
    assert context_block("vlm", [], "vqa") == "" and context_block("blip", [], "caption") == ""
    prompt = render(load_template("vlm", "default", "vqa"), vlm, "what color is the shape?")
    assert prompt.startswith("Similar images:") and prompt.endswith("what color is the shape?")


def test_user_templates_need_their_placeholders(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Describe the picture.")
    with pytest.raises(UserError, match="needs {context}"):
        load_template("vlm", str(bad), "caption")
    stray = tmp_path / "stray.txt"
    stray.write_text("{context}{image_count} images")
    with pytest.raises(UserError, match="placeholder other than"):
        render(load_template("vlm", str(stray), "caption"), "")
    with pytest.raises(UserError, match="neither 'default' nor a file"):
        load_template("vlm", str(tmp_path / "missing.txt"), "caption")
