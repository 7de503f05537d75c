"""The typed values flows hand their tasks (KBRef, EncoderRef, RetrievalConfig, GenerationJob): parsed once, the
same after Prefect task parameters and pickling, and hashing to the job ids and fingerprints a store already has."""
from __future__ import annotations

import pickle

import cloudpickle
import pytest

from ravlm_core.config import Settings
from ravlm_core.encoders import EncoderRef
from ravlm_core.errors import UserError
from ravlm_core.generators import GenerationJob, GeneratorSpec
from ravlm_core.retrieval.knowledge import KBRef, RetrievalConfig, parse_kb, retrieval_config

KB = parse_kb(["easy-vqa", "shapes:test", "easy-vqa:train"], "ignored", "train")
ENCODER = EncoderRef(model_ref="models/encoders/builtin-abc", model_tag="builtin-abc", dim=256, question_tag="minilm-q")
JOB = GenerationJob("vqa-0123", GeneratorSpec.parse("vlm:/models/smol,num_beams=2"), "vlm-abc", True, "/w")


def test_a_kb_is_parsed_once_into_its_sets_label_and_json_form():
    assert KB == KBRef((("easy-vqa", "train"), ("shapes", "test")))  # in the order named, each once
    assert KB.label == "easy-vqa:train,shapes:test"
    assert parse_kb(KB.to_json(), "other", "val") == KB  # the JSON form reads back whatever the default split
    assert parse_kb(None, "shapes", "train").sets == (("shapes", "train"),)
    assert {KB: 1}[parse_kb(["easy-vqa:train", "shapes:test"], "x", "train")] == 1  # its own cache key
    with pytest.raises(UserError, match="DATASET or DATASET:SPLIT"):
        parse_kb([":train"], "shapes", "train")


def test_retrieval_defaults_are_the_settings_and_its_repr_is_what_fingerprints_hash():
    assert RetrievalConfig() == retrieval_config(Settings.model_construct())
    # load_knowledge_base hashes str(config) into every KB fingerprint: job ids and trained answerers follow it.
    assert str(RetrievalConfig()) == ("RetrievalConfig(question_match_min=0.0, leakage_guard=True, "
                                      "near_duplicate_distance=3.0, match_question_form=True)")


def test_job_ids_come_from_the_same_inputs_as_before():
    from flows.jobs import _generation_job

    job = _generation_job("vqa", "shapes", "test", GeneratorSpec.parse("builtin-vote"), True, "e6dd3ab10d989557",
                          None, 5, "q1?")
    assert (job.job_id, job.variant, job.tag) == ("vqa-8e5531d5ecca42b9", "voting", "builtin-vote-2b455b3cba7e")
    bare = _generation_job("vqa", "shapes", "test", GeneratorSpec.parse("fusion"), False, "ff224219e9708fb9",
                           None, 5, "q1?")
    assert (bare.job_id, bare.variant) == ("vqa-eef9a5b264b17030", "fusion-no-retrieval")


@pytest.mark.parametrize("value", [KB, ENCODER, RetrievalConfig(question_match_min=0.5), JOB])
def test_values_pickle_for_dask_and_ray_workers(value):
    assert pickle.loads(cloudpickle.dumps(value)) == value


@pytest.mark.server
def test_values_pass_through_prefect_task_parameters_and_keyword_map(harness):
    from prefect import flow, task, unmapped
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(cache_policy=NO_CACHE)
    def part(kb: KBRef, encoder: EncoderRef, retrieval: RetrievalConfig, job: GenerationJob, part: str) -> tuple:
        return kb, encoder, retrieval, job, part

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def parts() -> list:
        return part.map(kb=unmapped(KB), encoder=unmapped(ENCODER), retrieval=unmapped(RetrievalConfig()),
                        job=unmapped(JOB), part=["0000:8000", "8000:g"]).result()

    seen = parts()
    assert [s[4] for s in seen] == ["0000:8000", "8000:g"]
    assert all(s[:4] == (KB, ENCODER, RetrievalConfig(), JOB) for s in seen)
    assert isinstance(seen[0][3].spec, GeneratorSpec)
