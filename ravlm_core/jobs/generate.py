"""Bulk generation with a model generator (BLIP, chat VLM, SmallCap) over one part of a query set.

Reader → mapper → writer per batch: read the part's items that the job has not done, retrieve their neighbours
from the knowledge base, decode their images, generate, and upsert the prediction rows (with the prompt each
model received). Rows are committed every batch, so a crash loses at most one batch and the rerun skips the rest.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ravlm_core.contents import read_images, read_thumbnails
from ravlm_core.jobs.captioning import caption_rows
from ravlm_core.errors import UserError
from ravlm_core.locations import local_model
from ravlm_core.generators import GenerationJob, GeneratorSpec, Request, load_generator
from ravlm_core.retrieval.knowledge import KnowledgeBase
from ravlm_core.embed.pinning import timed_load
from ravlm_core.retrieval.search import Neighbours, search, sets_filter, vectors_by_id
from ravlm_core.store import Store
from ravlm_core.schemas import CAPTION_PREDICTIONS, IMAGES, IMAGES_SCHEMA, VQA_PREDICTIONS
from ravlm_core.jobs.vqa import Retrieved, prediction_rows, retrieve_for_items, stored_guard

log = logging.getLogger(__name__)


_LOADING = threading.Lock()


def cached_generator(spec: GeneratorSpec, model_dir: str | None, device: str):
    """One loaded model per process, reused by every part the process runs (threads wait for the first load)."""
    with _LOADING:
        return _load(spec, model_dir, device)


@lru_cache(maxsize=2)
def _load(spec: GeneratorSpec, model_dir: str | None, device: str):
    if model_dir:
        spec = GeneratorSpec.from_fields({**spec.fields(), "model": local_model(model_dir)})
    return timed_load(f"generator {spec.kind} {spec.model}", lambda: load_generator(spec, device=device))


def generate_vqa(store: Store, kb: KnowledgeBase, items: pd.DataFrame, job: GenerationJob, k: int, device: str,
                 run_id: str = "") -> tuple[int, int]:
    """Answer `items` (rows of `jobs.vqa_items`) batch by batch; returns (new rows, items with a near-duplicate)."""
    generator = cached_generator(job.spec, job.model_dir, device)
    new = near = 0
    for batch in _batches(items, job.spec.batch_size):
        started = time.perf_counter()
        image_ids, questions = batch["image_id"].tolist(), batch["question"].tolist()
        if job.use_retrieval:
            retrieved = retrieve_for_items(store, kb, image_ids, questions, k)
            contexts = [vqa_context(kb, retrieved, i, job.spec.context_items) for i in range(len(batch))]
        else:
            retrieved = _no_neighbours(len(batch))
            contexts = [[] for _ in range(len(batch))]
        requests = _requests(store, kb, generator, image_ids, questions, contexts, job.spec.context_images)
        read = time.perf_counter()
        generations = generator.generate(requests, "vqa")
        rows = prediction_rows(job, kb, batch, retrieved, [g.text for g in generations], run_id,
                               [g.prompt for g in generations])
        new += store.upsert(VQA_PREDICTIONS, rows, "pred_id")
        near += sum(n > 0 for n in retrieved.neighbours.near_duplicates)
        _log_batch("vqa", job, len(batch), started, read)
    return new, near


def generate_captions(store: Store, kb: KnowledgeBase, members: pd.DataFrame, job: GenerationJob, k: int,
                      device: str, run_id: str = "") -> tuple[int, int]:
    """Caption `members` (listed images) batch by batch; returns (new rows, items with a near-duplicate)."""
    generator = cached_generator(job.spec, job.model_dir, device)
    new = near = 0
    for batch in _batches(members, job.spec.batch_size):
        started = time.perf_counter()
        image_ids = batch["image_id"].tolist()
        if job.use_retrieval:
            vectors = vectors_by_id(store, kb.image_table, image_ids, "image_id")
            neighbours = search(store, kb.image_table, vectors, k, where=kb.where,
                                guard=stored_guard(store, kb, image_ids))
            contexts = [[{"image_id": i, "caption": kb.captions.get(i), "score": s}
                         for i, s in zip(ids, scores) if kb.captions.get(i)][: job.spec.context_items]
                        for ids, scores in zip(neighbours.ids, neighbours.scores)]
        else:
            neighbours = _no_neighbours(len(batch)).neighbours
            contexts = [[] for _ in range(len(batch))]
        requests = _requests(store, kb, generator, image_ids, [None] * len(batch), contexts,
                             job.spec.context_images)
        read = time.perf_counter()
        generations = generator.generate(requests, "caption")
        rows = caption_rows(job, kb, batch, neighbours, [g.text for g in generations], run_id,
                            [g.prompt for g in generations])
        new += store.upsert(CAPTION_PREDICTIONS, rows, "pred_id")
        near += sum(n > 0 for n in neighbours.near_duplicates)
        _log_batch("caption", job, len(batch), started, read)
    return new, near


def vqa_context(kb: KnowledgeBase, retrieved: Retrieved, item: int, limit: int) -> list[dict]:
    """An item's neighbours for the prompt: caption, and the answers they got to the KB question matched to the
    item's (all their QA pairs when the question matched none closely)."""
    matched = int(retrieved.question_index[item])
    fallback = retrieved.question_sim[item] < kb.config.question_match_min
    context = []
    for image_id, score in zip(retrieved.neighbours.ids[item], retrieved.neighbours.scores[item]):
        questions, answers = kb.qa_by_image.get(image_id, (np.empty(0, int), np.empty(0, int)))
        qa = [(kb.questions[q], kb.answers[a]) for q, a in zip(questions, answers) if fallback or q == matched]
        context.append({"image_id": image_id, "caption": kb.captions.get(image_id), "qa": qa, "score": score})
        if len(context) == limit:
            break
    return context


def _requests(store: Store, kb: KnowledgeBase, generator, image_ids: list[str], questions: list[str | None],
              contexts: list[list[dict]], context_images: int) -> list[Request]:
    """The batch's requests: pixels (or, for a generator that reads vectors, the KB encoder's image vectors)."""
    if getattr(generator, "needs_pixels", True):
        images = read_images(store, image_ids)
        pixels, vectors = [images[i] for i in image_ids], [None] * len(image_ids)
    else:
        pixels, vectors = [None] * len(image_ids), list(vectors_by_id(store, kb.image_table, image_ids, "image_id"))
    if context_images:
        shown = [n["image_id"] for context in contexts for n in context[:context_images]]
        thumbnails = read_thumbnails(store, shown)
        for context in contexts:
            for n in context[:context_images]:
                n["image"] = thumbnails.get(n["image_id"])
    return [Request(p, q, c, v) for p, q, c, v in zip(pixels, questions, contexts, vectors)]


def train_smallcap_for(store: Store, kb: KnowledgeBase, k: int, out_root: Path, device: str = "cpu",
                       config=None) -> Path:
    """Train (or reuse) the KB's SmallCap decoder on its captioned images, each prompted with the captions of
    its own neighbours, retrieved as inference will: never its own bytes or a near-duplicate of it."""
    from ravlm_core.generators.smallcap import META_FILE, SmallCapConfig, smallcap_dir, train_smallcap

    config = config or SmallCapConfig()
    image_ids = sorted(kb.captions)
    if not image_ids:
        raise UserError(f"knowledge base {kb.label} has no captions to train smallcap on: caption it, or name "
                        f"another with --kb")
    # One example per (image, reference caption): COCO's five captions teach five ways to say it.
    references = _kb_references(store, kb)
    examples = [(row, caption) for row, image_id in enumerate(image_ids)
                for caption in dict.fromkeys([kb.captions[image_id], *references.get(image_id, [])])]
    captions = [c for _, c in examples]
    data = hashlib.blake2b("\x1f".join(captions).encode(), digest_size=8).hexdigest()  # the references too
    fingerprint = f"{kb.fingerprint}:k={k}:{data}"
    if (smallcap_dir(out_root, fingerprint, config) / META_FILE).exists():  # before retrieval: idle nights
        return smallcap_dir(out_root, fingerprint, config)
    vectors = vectors_by_id(store, kb.image_table, image_ids, "image_id")
    guard = stored_guard(store, kb, image_ids)
    neighbours = search(store, kb.image_table, vectors, k, where=kb.where, guard=guard,
                        exclude=None if guard.drop else image_ids)
    shown = [list(dict.fromkeys(kb.captions[i] for i in ids if i in kb.captions)) for ids in neighbours.ids]
    rows = [row for row, _ in examples]
    return train_smallcap(vectors[rows], [shown[r] for r in rows], captions, out_root, fingerprint, config, device)


def _kb_references(store: Store, kb: KnowledgeBase) -> dict[str, list[str]]:
    """image id -> every reference caption its listings in the KB's sets carry."""
    store.ensure_columns(IMAGES, IMAGES_SCHEMA)
    rows = store.read(IMAGES, columns=["image_id", "captions"], where=sets_filter(kb.sets))
    references: dict[str, list[str]] = {}
    for image_id, captions in zip(rows.column("image_id").to_pylist(), rows.column("captions").to_pylist()):
        references.setdefault(image_id, []).extend(captions or [])
    return references


def _no_neighbours(n: int) -> Retrieved:
    empty = np.zeros((n, 0), np.float32)
    return Retrieved(empty, empty, np.full(n, -1), np.zeros(n, np.float32),
                     Neighbours([[] for _ in range(n)], [[] for _ in range(n)], [0] * n))


def _batches(frame: pd.DataFrame, size: int):
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size].reset_index(drop=True)


def _log_batch(task: str, job: GenerationJob, n: int, started: float, read: float) -> None:
    done = time.perf_counter()
    log.info("%s[%s] %d items: read+retrieve %.1fs, generate %.1fs (%.2f items/s)", task, job.tag, n,
             read - started, done - read, n / max(done - read, 1e-9))

