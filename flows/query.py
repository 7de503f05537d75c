"""Query flows: search the store by text or image, and ask a question about an image."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import settings_from
from ravlm_core import query
from ravlm_core.answerers import FusionAnswerer
from ravlm_core.jobs import cached_knowledge_base
from ravlm_core.knowledge import RetrievalConfig, parse_kb
from ravlm_core.retrieve import kb_filter, vector_sets_filter
from ravlm_core.store import IMAGES, Store
from tasks.embed import load_cached_encoder, load_cached_question_encoder, resolve_encoder
from tasks.jobs import train_answerer


@task(cache_policy=NO_CACHE)
def search_task(store_uri: str, model_ref: str, device: str, text: str | None, image: str | None, k: int,
                where: str | None) -> list[dict]:
    return query.search_images(Store(store_uri), load_cached_encoder(model_ref, device), text=text, image=image, k=k, where=where)


@flow(name="search")
def search_flow(text: str | None = None, image: str | None = None, k: int = 10, dataset: str | None = None,
                split: str | None = None, overrides: dict | None = None) -> list[dict]:
    """Text→image or image→image search over every embedded image (optionally one dataset / split)."""
    settings = settings_from(overrides)
    device = settings.torch_device()
    encoder = resolve_encoder(settings.encoder, settings.store_uri, str(settings.models_dir), device)
    where = None
    if dataset:
        store = Store(settings.store_uri)
        rows = store.read(IMAGES, columns=["split"], where=kb_filter(dataset, split))
        where = vector_sets_filter([(dataset, s) for s in sorted(set(rows.column("split").to_pylist()))]) if rows.num_rows else "false"
    return search_task(settings.store_uri, encoder["model_ref"], device, text, image, k, where)


@task(cache_policy=NO_CACHE)
def ask_task(store_uri: str, encoder: dict, device: str, kb: list, retrieval: dict,
             answerer_dir: str | None, image: str, question: str, k: int) -> dict:
    kb = cached_knowledge_base(store_uri, encoder["model_tag"], encoder["question_tag"], [tuple(s) for s in kb],
                               RetrievalConfig(**retrieval))
    answerer = FusionAnswerer(Path(answerer_dir), device) if answerer_dir else None
    return query.ask(Store(store_uri), kb, load_cached_encoder(encoder["model_ref"], device),
                     load_cached_question_encoder(device), answerer, image, question, k)


@flow(name="ask")
def ask_flow(image: str, question: str, kb: list[str] | None = None, overrides: dict | None = None) -> dict:
    """Answer `question` about `image` with the fusion answerer of the knowledge base `kb` (default easy-vqa:train)."""
    from flows.jobs import retrieval_settings

    settings = settings_from(overrides)
    device = settings.torch_device()
    sets = [list(s) for s in parse_kb(kb, "easy-vqa", settings.kb_split)]
    retrieval = retrieval_settings(settings)
    encoder = resolve_encoder(settings.encoder, settings.store_uri, str(settings.models_dir), device)
    answerer = train_answerer(settings.store_uri, encoder, sets, retrieval, settings.k, str(settings.models_dir),
                              True, device)
    return ask_task(settings.store_uri, encoder, device, sets, retrieval, answerer, image, question, settings.k)
