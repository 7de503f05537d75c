"""Retrieval-augmented job tasks: train an answerer once, then answer / caption one shard at a time.

`encoder` is the small dict `resolve_encoder` returns (model ref and tags), never a model object."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from ravlm_core import jobs, vqa
from ravlm_core.store import Store


@task(cache_policy=NO_CACHE)
def knowledge_fingerprint(store_uri: str, encoder: dict, dataset: str, kb_split: str) -> str:
    """Changes whenever the KB's content or encoders change, so job ids (and their rows) follow it."""
    return jobs.cached_knowledge_base(store_uri, encoder["model_tag"], encoder["question_tag"], dataset,
                                      kb_split).fingerprint


@task(cache_policy=NO_CACHE)
def train_answerer(store_uri: str, encoder: dict, dataset: str, kb_split: str, k: int, models_dir: str,
                   use_retrieval: bool, device: str) -> str:
    """Folder of the fusion answerer for this KB (trained on first use, reused while the KB is unchanged)."""
    kb = jobs.cached_knowledge_base(store_uri, encoder["model_tag"], encoder["question_tag"], dataset, kb_split)
    out_root = Path(models_dir) / "answerers" / dataset
    return str(vqa.train_answerer(Store(store_uri), kb, k, out_root, use_retrieval, device))


@task(cache_policy=NO_CACHE, retries=1)
def vqa_shard(store_uri: str, encoder: dict, dataset: str, kb_split: str, shard_path: str, job: str,
              variant: str, k: int, answerer_dir: str | None, device: str) -> dict:
    kb = jobs.cached_knowledge_base(store_uri, encoder["model_tag"], encoder["question_tag"], dataset, kb_split)
    return asdict(jobs.run_vqa_shard(Store(store_uri), kb, shard_path, job, variant, k, answerer_dir, device,
                                     _run_id()))


@task(cache_policy=NO_CACHE, retries=1)
def caption_shard(store_uri: str, encoder: dict, dataset: str, kb_split: str, shard_path: str, job: str,
                  variant: str, k: int) -> dict:
    kb = jobs.cached_knowledge_base(store_uri, encoder["model_tag"], encoder["question_tag"], dataset, kb_split)
    return asdict(jobs.run_caption_shard(Store(store_uri), kb, shard_path, job, variant, k, _run_id()))


def _run_id() -> str:
    return str(flow_run.id or "")
