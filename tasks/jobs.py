"""Retrieval-augmented job tasks: train an answerer once, then answer / caption one part of a query set at a time.

`encoder` is the small dict `resolve_encoder` returns (model ref and tags), never a model object; `kb` is a list
of [dataset, split] pairs, `retrieval` the RetrievalConfig's fields and `job` a GenerationJob's, so every argument
stays small and JSON; models load inside the process that runs the part."""
from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from ravlm_core.jobs import captioning, parts, vqa
from ravlm_core.errors import naming
from ravlm_core.generators import GenerationJob
from ravlm_core.retrieval.knowledge import RetrievalConfig, kb_label
from ravlm_core.locations import publish, pulled, shared_ref
from ravlm_core.store import Store
from tasks.retry import RETRY


def _kb(store_uri: str, encoder: dict, kb: list, retrieval: dict):
    return parts.cached_knowledge_base(store_uri, encoder["model_tag"], encoder["question_tag"],
                                      [tuple(s) for s in kb], RetrievalConfig(**retrieval))


@task(cache_policy=NO_CACHE)
def knowledge_fingerprint(store_uri: str, encoder: dict, kb: list, retrieval: dict) -> str:
    """Changes whenever the KB's content, encoders or retrieval settings change, so job ids follow it."""
    return _kb(store_uri, encoder, kb, retrieval).fingerprint


@task(cache_policy=NO_CACHE)
def query_parts(store_uri: str, dataset: str, split: str, part_size: int) -> list[str]:
    return parts.query_parts(Store(store_uri), dataset, split, part_size)


@task(cache_policy=NO_CACHE)
def train_answerer(store_uri: str, encoder: dict, kb: list, retrieval: dict, k: int, models_dir: str,
                   use_retrieval: bool, device: str) -> str:
    """Folder of the fusion answerer for this KB (trained on first use, reused while the KB is unchanged)."""
    with naming(f"training the fusion answerer on {_label(kb)}"):
        knowledge = _kb(store_uri, encoder, kb, retrieval)
        # Answerers trained before (on any machine, when the models are on object storage) are reused.
        folder = vqa.train_answerer(Store(store_uri), knowledge, k, pulled(models_dir, "answerers"), use_retrieval,
                                    device)
        publish(models_dir, folder)
        return shared_ref(models_dir, folder)


@task(cache_policy=NO_CACHE)
def train_smallcap(store_uri: str, encoder: dict, kb: list, retrieval: dict, k: int, models_dir: str,
                   device: str) -> str:
    """Folder of the KB's SmallCap caption decoder (trained on first use, reused while the KB is unchanged)."""
    with naming(f"training SmallCap on {_label(kb)}"):
        knowledge = _kb(store_uri, encoder, kb, retrieval)
        folder = captioning.train_smallcap_for(Store(store_uri), knowledge, k, pulled(models_dir, "smallcap"), device)
        publish(models_dir, folder)
        return shared_ref(models_dir, folder)


@task(cache_policy=NO_CACHE, **RETRY)
def vqa_part(store_uri: str, encoder: dict, kb: list, retrieval: dict, dataset: str, split: str, part: str, job: dict,
             k: int, device: str, questions: list[str] | None = None) -> dict:
    with naming(f"vqa job {job['job_id']}, part {part} of {dataset}/{split}"):
        knowledge = _kb(store_uri, encoder, kb, retrieval)
        return asdict(vqa.run_vqa_part(Store(store_uri), knowledge, dataset, split, part, GenerationJob.from_dict(job),
                                        k, device, _run_id(), questions))


@task(cache_policy=NO_CACHE, **RETRY)
def caption_part(store_uri: str, encoder: dict, kb: list, retrieval: dict, dataset: str, split: str, part: str,
                 job: dict, k: int, device: str) -> dict:
    with naming(f"caption job {job['job_id']}, part {part} of {dataset}/{split}"):
        knowledge = _kb(store_uri, encoder, kb, retrieval)
        return asdict(captioning.run_caption_part(Store(store_uri), knowledge, dataset, split, part,
                                            GenerationJob.from_dict(job), k, device, _run_id()))


def _label(kb: list) -> str:
    return kb_label([tuple(s) for s in kb])


def _run_id() -> str:
    return str(flow_run.id or "")
