"""Bulk retrieval-augmented VQA and captioning flows: a query set against a knowledge base, one task per part.

Each flow parses its JSON parameters once into the typed values its tasks take: a `KBRef` from `kb`, a
`GenerationJob` from `generator`, the `EncoderRef` its encoder resolves to and a `RetrievalConfig`."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, unmapped

from flows.common import RUN_HOOKS, on_device, resolve_run_encoder, run_name, settings_from
from ravlm_core.config import Settings
from ravlm_core.errors import UserError
from ravlm_core.generators import MODEL_KINDS, TASKS, GenerationJob, GeneratorSpec, generation_variant, generator_tag
from ravlm_core.ids import job_id
from ravlm_core.ingest.manifests import read_questions_file
from ravlm_core.retrieval.knowledge import KBRef, parse_kb, retrieval_config
from tasks.embed import embed_texts
from tasks.jobs import caption_part, knowledge_fingerprint, query_parts, train_answerer, train_smallcap, vqa_part


def _summary(job: GenerationJob, kb: KBRef, results: list[dict]) -> dict:
    return {"job_id": job.job_id, "variant": job.variant, "generator": job.tag, "kb": kb.label,
            "parts": len(results), "items": sum(r["n_items"] for r in results),
            "new_rows": sum(r["n_new"] for r in results),
            "near_duplicate_items": sum(r["guarded"] for r in results)}


def retrieval_settings(settings: Settings) -> dict:
    """The retrieval settings as a run's report records them."""
    return asdict(retrieval_config(settings))


def _generation_job(kind: str, dataset: str, split: str, spec: GeneratorSpec, use_retrieval: bool, fingerprint: str,
                    model_dir: str | None, k: int, *parts: str) -> GenerationJob:
    """The job's id is derived from everything that decides its rows, so a rerun resumes the same job."""
    tag = generator_tag(spec, model_dir if spec.kind in MODEL_KINDS else None)
    variant = generation_variant(spec, use_retrieval)
    job = job_id(kind, dataset, split, variant, fingerprint, tag, Path(model_dir or "").name, f"k={k}", *parts)
    return GenerationJob(job_id=job, spec=spec, tag=tag, use_retrieval=use_retrieval, model_dir=model_dir)


def _spec_for(task: str, generator: str) -> GeneratorSpec:
    spec = GeneratorSpec.parse(generator)
    if not spec.serves(task):
        kinds = ", ".join(TASKS[task])
        raise UserError(f"generator {spec.kind} does not do {task}; for {task} choose one of {kinds}")
    return spec


@flow(name="vqa", flow_run_name=run_name("vqa", "dataset", "split"), **RUN_HOOKS)
def vqa_flow(dataset: str, split: str = "test", generator: str = "builtin-fusion", kb: list[str] | None = None,
             questions: str | None = None, no_retrieval: bool = False, overrides: dict | None = None) -> dict:
    """Answer every question of `dataset`/`split` (or, for an unlabeled set, every line of the `questions` file for
    every image) with `generator` (a spec, see ravlm_core.generators), given neighbours from the knowledge base
    `kb` (["DATASET[:SPLIT]", ...]; default: its train split), or none with `no_retrieval`."""
    spec = _spec_for("vqa", generator)
    settings = settings_from(overrides)
    device = settings.torch_device()
    gpu = on_device(device, settings)
    kb_ref = parse_kb(kb, dataset, settings.kb_split)
    retrieval = retrieval_config(settings)
    store_uri, k = settings.store_uri, settings.k
    encoder = resolve_run_encoder(settings, device)
    asked = read_questions_file(Path(questions)) if questions else None
    if asked:
        gpu(embed_texts)(store_uri=store_uri, encoder=encoder, device=device, batch_size=settings.batch_size,
                         datasets=[dataset], extra_questions=asked)
    model_dir = None
    if spec.kind == "builtin-fusion":
        model_dir = gpu(train_answerer)(store_uri=store_uri, encoder=encoder, kb=kb_ref, retrieval=retrieval, k=k,
                                        models_dir=str(settings.models_dir), use_retrieval=not no_retrieval,
                                        device=device)
    fingerprint = knowledge_fingerprint(store_uri=store_uri, encoder=encoder, kb=kb_ref, retrieval=retrieval)
    job = _generation_job("vqa", dataset, split, spec, not no_retrieval, fingerprint, model_dir, k, *(asked or []))
    parts = query_parts(store_uri=store_uri, dataset=dataset, split=split, part_size=settings.shard_size)
    get_run_logger().info("vqa[%s] %s/%s against %s: %d parts, job %s", job.variant, dataset, split, kb_ref.label,
                          len(parts), job.job_id)
    results = gpu(vqa_part).map(store_uri=unmapped(store_uri), encoder=unmapped(encoder), kb=unmapped(kb_ref),
                                retrieval=unmapped(retrieval), dataset=unmapped(dataset), split=unmapped(split),
                                part=parts, job=unmapped(job), k=unmapped(k), device=unmapped(device),
                                questions=unmapped(asked)).result()
    return _summary(job, kb_ref, results)


@flow(name="caption", flow_run_name=run_name("caption", "dataset", "split"), **RUN_HOOKS)
def caption_flow(dataset: str, split: str = "test", generator: str = "builtin-transfer", kb: list[str] | None = None,
                 no_retrieval: bool = False, overrides: dict | None = None) -> dict:
    """Caption every image of `dataset`/`split` with `generator`, given its neighbours in the knowledge base `kb`
    (or none with `no_retrieval`, which the baselines made of retrieval refuse: `generators.without_retrieval`)."""
    spec = _spec_for("caption", generator)
    settings = settings_from(overrides)
    device = settings.torch_device()
    gpu = on_device(device, settings)
    kb_ref = parse_kb(kb, dataset, settings.kb_split)
    retrieval = retrieval_config(settings)
    store_uri, k = settings.store_uri, settings.k
    encoder = resolve_run_encoder(settings, device)
    fingerprint = knowledge_fingerprint(store_uri=store_uri, encoder=encoder, kb=kb_ref, retrieval=retrieval)
    model_dir = None
    if spec.kind == "smallcap" and not spec.model:  # the embedded default's captioner: trained on this KB
        model_dir = gpu(train_smallcap)(store_uri=store_uri, encoder=encoder, kb=kb_ref, retrieval=retrieval, k=k,
                                        models_dir=str(settings.models_dir), device=device)
    job = _generation_job("caption", dataset, split, spec, not no_retrieval, fingerprint, model_dir, k)
    parts = query_parts(store_uri=store_uri, dataset=dataset, split=split, part_size=settings.shard_size)
    results = gpu(caption_part).map(store_uri=unmapped(store_uri), encoder=unmapped(encoder), kb=unmapped(kb_ref),
                                    retrieval=unmapped(retrieval), dataset=unmapped(dataset), split=unmapped(split),
                                    part=parts, job=unmapped(job), k=unmapped(k), device=unmapped(device)).result()
    return _summary(job, kb_ref, results)
