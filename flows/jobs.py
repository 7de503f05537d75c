"""Bulk retrieval-augmented VQA and captioning flows: a query set against a knowledge base, one task per part."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, unmapped

from flows.common import settings_from
from ravlm_core.config import Settings
from ravlm_core.errors import UserError
from ravlm_core.jobs import CAPTION_VARIANTS
from ravlm_core.knowledge import kb_label, parse_kb
from ravlm_core.sources import read_questions_file
from ravlm_core.vqa import VARIANTS, job_id
from tasks.embed import embed_texts, resolve_encoder
from tasks.jobs import caption_part, knowledge_fingerprint, query_parts, train_answerer, vqa_part


def _summary(job: str, variant: str, kb: list, results: list[dict]) -> dict:
    return {"job_id": job, "variant": variant, "kb": kb_label([tuple(s) for s in kb]), "parts": len(results),
            "items": sum(r["n_items"] for r in results), "new_rows": sum(r["n_new"] for r in results),
            "near_duplicate_items": sum(r["near_duplicates"] for r in results)}


def retrieval_settings(settings: Settings) -> dict:
    return {"question_match_min": settings.question_match_min, "match_question_form": settings.match_question_form,
            "leakage_guard": settings.leakage_guard, "near_duplicate_distance": settings.near_duplicate_distance}


@flow(name="vqa")
def vqa_flow(dataset: str, split: str = "test", variant: str = "fusion", kb: list[str] | None = None,
             questions: str | None = None, overrides: dict | None = None) -> dict:
    """Answer every question of `dataset`/`split` (or, for an unlabeled set, every line of the `questions` file for
    every image) with neighbours from the knowledge base `kb` (["DATASET[:SPLIT]", ...]; default: its train split)."""
    if variant not in VARIANTS:
        raise UserError(f"unknown VQA variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    settings = settings_from(overrides)
    device = settings.torch_device()
    sets = [list(s) for s in parse_kb(kb, dataset, settings.kb_split)]
    retrieval = retrieval_settings(settings)
    encoder = resolve_encoder(settings.encoder, settings.store_uri, str(settings.models_dir), device)
    asked = read_questions_file(Path(questions)) if questions else None
    if asked:
        embed_texts(settings.store_uri, encoder["model_ref"], device, settings.batch_size, [dataset], asked)
    answerer = None
    if variant != "voting":
        answerer = train_answerer(settings.store_uri, encoder, sets, retrieval, settings.k, str(settings.models_dir),
                                  variant == "fusion", device)
    fingerprint = knowledge_fingerprint(settings.store_uri, encoder, sets, retrieval)
    job = job_id("vqa", dataset, split, variant, fingerprint, Path(answerer or "").name, f"k={settings.k}",
                 *(asked or []))
    parts = query_parts(settings.store_uri, dataset, split, settings.shard_size)
    get_run_logger().info("vqa[%s] %s/%s against %s: %d parts, job %s", variant, dataset, split,
                          kb_label([tuple(s) for s in sets]), len(parts), job)
    results = vqa_part.map(unmapped(settings.store_uri), unmapped(encoder), unmapped(sets), unmapped(retrieval),
                           unmapped(dataset), unmapped(split), parts, unmapped(job), unmapped(variant),
                           unmapped(settings.k), unmapped(answerer), unmapped(device), unmapped(asked)).result()
    return _summary(job, variant, sets, results)


@flow(name="caption")
def caption_flow(dataset: str, split: str = "test", variant: str = "consensus", kb: list[str] | None = None,
                 overrides: dict | None = None) -> dict:
    """Caption every image of `dataset`/`split` from its neighbours in the knowledge base `kb` (`direct`: no
    neighbours, the KB caption whose text is closest to the image)."""
    if variant not in CAPTION_VARIANTS:
        raise UserError(f"unknown caption variant {variant!r}; choose one of {', '.join(CAPTION_VARIANTS)}")
    settings = settings_from(overrides)
    sets = [list(s) for s in parse_kb(kb, dataset, settings.kb_split)]
    retrieval = retrieval_settings(settings)
    encoder = resolve_encoder(settings.encoder, settings.store_uri, str(settings.models_dir), settings.torch_device())
    fingerprint = knowledge_fingerprint(settings.store_uri, encoder, sets, retrieval)
    job = job_id("caption", dataset, split, variant, fingerprint, f"k={settings.k}")
    parts = query_parts(settings.store_uri, dataset, split, settings.shard_size)
    results = caption_part.map(unmapped(settings.store_uri), unmapped(encoder), unmapped(sets), unmapped(retrieval),
                               unmapped(dataset), unmapped(split), parts, unmapped(job), unmapped(variant),
                               unmapped(settings.k)).result()
    return _summary(job, variant, sets, results)
