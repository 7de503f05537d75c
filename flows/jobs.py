"""Bulk retrieval-augmented VQA and captioning flows: one task per shard of the split, rows keyed by job."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, unmapped

from flows.common import settings_from, shards_of
from ravlm_core.jobs import CAPTION_VARIANTS
from ravlm_core.vqa import VARIANTS, job_id
from tasks.embed import resolve_encoder
from tasks.jobs import caption_shard, knowledge_fingerprint, train_answerer, vqa_shard


def _summary(job: str, variant: str, results: list[dict]) -> dict:
    return {"job_id": job, "variant": variant, "shards": len(results),
            "items": sum(r["n_items"] for r in results), "new_rows": sum(r["n_new"] for r in results)}


@flow(name="vqa")
def vqa_flow(dataset: str, split: str = "test", variant: str = "fusion", overrides: dict | None = None) -> dict:
    """Answer every question of `dataset`/`split` with retrieval from the KB split (`fusion-no-retrieval`: none)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown VQA variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    settings = settings_from(overrides)
    device = settings.torch_device()
    encoder = resolve_encoder(settings.encoder, settings.store_uri, str(settings.models_dir), device)
    answerer = None
    if variant != "voting":
        answerer = train_answerer(settings.store_uri, encoder, dataset, settings.kb_split, settings.k,
                                  str(settings.models_dir), variant == "fusion", device)
    kb = knowledge_fingerprint(settings.store_uri, encoder, dataset, settings.kb_split)
    job = job_id("vqa", dataset, split, variant, kb, Path(answerer or "").name, f"k={settings.k}")
    shards = shards_of(settings, dataset, split)
    get_run_logger().info("vqa[%s] %s/%s: %d shards, job %s", variant, dataset, split, len(shards), job)
    results = vqa_shard.map(unmapped(settings.store_uri), unmapped(encoder), unmapped(dataset),
                            unmapped(settings.kb_split), shards, unmapped(job), unmapped(variant),
                            unmapped(settings.k), unmapped(answerer), unmapped(device)).result()
    return _summary(job, variant, results)


@flow(name="caption")
def caption_flow(dataset: str, split: str = "test", variant: str = "consensus", overrides: dict | None = None) -> dict:
    """Caption every image of `dataset`/`split` from its KB neighbours (`direct`: no neighbours, text match)."""
    if variant not in CAPTION_VARIANTS:
        raise ValueError(f"unknown caption variant {variant!r}; choose one of {', '.join(CAPTION_VARIANTS)}")
    settings = settings_from(overrides)
    encoder = resolve_encoder(settings.encoder, settings.store_uri, str(settings.models_dir), settings.torch_device())
    kb = knowledge_fingerprint(settings.store_uri, encoder, dataset, settings.kb_split)
    job = job_id("caption", dataset, split, variant, kb, f"k={settings.k}")
    shards = shards_of(settings, dataset, split)
    results = caption_shard.map(unmapped(settings.store_uri), unmapped(encoder), unmapped(dataset),
                                unmapped(settings.kb_split), shards, unmapped(job), unmapped(variant),
                                unmapped(settings.k)).result()
    return _summary(job, variant, results)
