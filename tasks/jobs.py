"""Retrieval-augmented job tasks: train an answerer once, then answer / caption one part of a query set at a time.

Every argument is a path or a small frozen value the flow built once: `encoder` an `EncoderRef` (model ref and
tags, never a model object), `kb` a `KBRef` (which sets), `retrieval` a `RetrievalConfig` and `job` a
`GenerationJob`. The knowledge base itself (`knowledge`, a `KnowledgeBase`) and the models load inside the
process that runs the part."""
from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from ravlm_core.encoders import EncoderRef
from ravlm_core.errors import naming
from ravlm_core.generators import GenerationJob
from ravlm_core.jobs import captioning, parts, vqa
from ravlm_core.locations import publish, pulled, shared_ref
from ravlm_core.retrieval.knowledge import KBRef, KnowledgeBase, RetrievalConfig
from ravlm_core.store import Store
from tasks.retry import RETRY


def _knowledge(store_uri: str, encoder: EncoderRef, kb: KBRef, retrieval: RetrievalConfig) -> KnowledgeBase:
    return parts.cached_knowledge_base(store_uri, encoder.model_tag, encoder.question_tag, kb, retrieval)


@task(cache_policy=NO_CACHE)
def knowledge_fingerprint(store_uri: str, encoder: EncoderRef, kb: KBRef, retrieval: RetrievalConfig) -> str:
    """Changes whenever the KB's content, encoders or retrieval settings change, so job ids follow it."""
    return _knowledge(store_uri, encoder, kb, retrieval).fingerprint


@task(cache_policy=NO_CACHE)
def query_parts(store_uri: str, dataset: str, split: str, part_size: int) -> list[str]:
    return parts.query_parts(Store(store_uri), dataset, split, part_size)


@task(cache_policy=NO_CACHE)
def train_answerer(store_uri: str, encoder: EncoderRef, kb: KBRef, retrieval: RetrievalConfig, k: int,
                   models_dir: str, use_retrieval: bool, device: str) -> str:
    """Folder of the fusion answerer for this KB (trained on first use, reused while the KB is unchanged)."""
    with naming(f"training the fusion answerer on {kb.label}"):
        knowledge = _knowledge(store_uri, encoder, kb, retrieval)
        # Answerers trained before (on any machine, when the models are on object storage) are reused.
        folder = vqa.train_answerer(Store(store_uri), knowledge, k, pulled(models_dir, "answerers"), use_retrieval,
                                    device)
        publish(models_dir, folder)
        return shared_ref(models_dir, folder)


@task(cache_policy=NO_CACHE)
def train_smallcap(store_uri: str, encoder: EncoderRef, kb: KBRef, retrieval: RetrievalConfig, k: int,
                   models_dir: str, device: str) -> str:
    """Folder of the KB's SmallCap caption decoder (trained on first use, reused while the KB is unchanged)."""
    with naming(f"training SmallCap on {kb.label}"):
        knowledge = _knowledge(store_uri, encoder, kb, retrieval)
        folder = captioning.train_smallcap_for(Store(store_uri), knowledge, k, pulled(models_dir, "smallcap"), device)
        publish(models_dir, folder)
        return shared_ref(models_dir, folder)


@task(cache_policy=NO_CACHE, **RETRY)
def vqa_part(store_uri: str, encoder: EncoderRef, kb: KBRef, retrieval: RetrievalConfig, dataset: str, split: str,
             part: str, job: GenerationJob, k: int, device: str, questions: list[str] | None = None) -> dict:
    with naming(f"vqa job {job.job_id}, part {part} of {dataset}/{split}"):
        knowledge = _knowledge(store_uri, encoder, kb, retrieval)
        return asdict(vqa.run_vqa_part(Store(store_uri), knowledge, dataset, split, part, job, k, device,
                                         _run_id(), questions))


@task(cache_policy=NO_CACHE, **RETRY)
def caption_part(store_uri: str, encoder: EncoderRef, kb: KBRef, retrieval: RetrievalConfig, dataset: str,
                 split: str, part: str, job: GenerationJob, k: int, device: str) -> dict:
    with naming(f"caption job {job.job_id}, part {part} of {dataset}/{split}"):
        knowledge = _knowledge(store_uri, encoder, kb, retrieval)
        return asdict(captioning.run_caption_part(Store(store_uri), knowledge, dataset, split, part, job, k, device,
                                             _run_id()))


def _run_id() -> str:
    return str(flow_run.id or "")
