"""The retrieval-augmented captioning job over one part of a query set: consensus caption transfer from the nearest
KB images, the nearest KB caption, or a model generator (BLIP, a chat VLM, SmallCap) prompted with their captions."""
from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ravlm_core.errors import UserError
from ravlm_core.generators import MODEL_KINDS, GenerationJob
from ravlm_core.ids import pred_ids, text_id
from ravlm_core.jobs.parts import (
    JobResult,
    batches,
    cached_generator,
    left_to_do,
    log_batch,
    model_requests,
    part_members,
)
from ravlm_core.retrieval.knowledge import IMAGE_TAU, KnowledgeBase
from ravlm_core.retrieval.search import (
    Neighbours,
    search,
    stored_guard,
    vectors_by_id,
)
from ravlm_core.schemas import (
    CAPTION_PREDICTIONS,
    CAPTION_PREDICTIONS_SCHEMA,
)
from ravlm_core.store import Store
from ravlm_core.writer import BatchedWriter

log = logging.getLogger(__name__)


def run_caption_part(store: Store, knowledge: KnowledgeBase, dataset: str, split: str, part: str, job: GenerationJob,
                     k: int, device: str = "cpu", run_id: str = "") -> JobResult:
    """Caption the images of one part that `job` has not captioned yet."""
    members = left_to_do(store, CAPTION_PREDICTIONS, "member_id", part_members(store, dataset, split, part), job)
    if members.empty:
        return JobResult(job.job_id, part, 0, 0, 0)
    if job.spec.kind in MODEL_KINDS:
        n_new, guarded = _generate_captions(store, knowledge, members, job, k, device, run_id)
    else:
        image_ids = members["image_id"].tolist()
        neighbours, predictions = _builtin_captions(store, knowledge, image_ids, k, job.spec.kind)
        rows = caption_rows(job, knowledge, members, neighbours, predictions, run_id)
        n_new = store.upsert(CAPTION_PREDICTIONS, rows, "pred_id")
        guarded = sum(x > 0 for x in neighbours.guarded)
    log.info("caption[%s] %s/%s part %s: %d images", job.variant, dataset, split, part, len(members))
    return JobResult(job.job_id, part, len(members), n_new, guarded)


def _builtin_captions(store: Store, knowledge: KnowledgeBase, image_ids: list[str], k: int,
                      kind: str) -> tuple[Neighbours, list[str]]:
    """Consensus caption transfer from the neighbours (builtin-transfer), or the KB caption nearest the image in
    the shared space (builtin-nearest: a search of captions, not of images, so no image neighbours)."""
    image_vectors = vectors_by_id(store, knowledge.image_table, image_ids, "image_id")
    references = {i: knowledge.references_of(i) for i in knowledge.captions}
    kb_captions = sorted({c for texts in references.values() for c in texts})
    caption_vectors = vectors_by_id(store, knowledge.text_table, [text_id(c) for c in kb_captions], "text_id")
    if kind == "builtin-nearest":
        return Neighbours.none(len(image_ids)), nearest_captions(image_vectors, kb_captions, caption_vectors)
    neighbours = search(store, knowledge.image_table, image_vectors, k, where=knowledge.where,
                        guard=stored_guard(store, knowledge, image_ids))
    return neighbours, consensus_captions(neighbours, references, dict(zip(kb_captions, caption_vectors)))


def consensus_captions(neighbours: Neighbours, references: dict[str, list[str]],
                       caption_vectors: dict[str, np.ndarray]) -> list[str]:
    """For each image, the neighbours' caption that agrees most with all neighbours' captions.

    Consensus re-ranking (Devlin et al., 2015): a caption that many close neighbours roughly share beats the
    one caption of the single nearest image, which may be an outlier. The candidates are every caption of every
    neighbour (`references`: image id -> its captions; COCO and Flickr give five); a candidate's agreement with a
    neighbour is its mean cosine to that neighbour's captions, and neighbours count by how close their image is
    (softmax at IMAGE_TAU), so an image with five captions weighs as much as one with a single caption.
    """
    out = []
    for ids, scores in zip(neighbours.ids, neighbours.scores):
        pairs = [(references[i], s) for i, s in zip(ids, scores) if references.get(i)]
        if not pairs:
            out.append("")
            continue
        similarity = np.array([s for _, s in pairs])
        weights = np.exp((similarity - similarity.max()) / IMAGE_TAU)  # [n_neighbours]
        candidates = list(dict.fromkeys(c for texts, _ in pairs for c in texts))
        cand = np.stack([caption_vectors[t] for t in candidates])  # [n_candidates, d]
        # [n_candidates, n_neighbours]: mean cosine to each neighbour's captions.
        agreement = np.stack([(cand @ np.stack([caption_vectors[t] for t in texts]).T).mean(1)
                              for texts, _ in pairs], 1)
        out.append(candidates[int(np.argmax(agreement @ weights))])
    return out


def nearest_captions(image_vectors: np.ndarray, candidates: list[str], candidate_vectors: np.ndarray) -> list[str]:
    """For each image, the known caption whose text vector is closest to it (the nearest-caption baseline)."""
    if not candidates:
        return [""] * len(image_vectors)
    return [candidates[i] for i in (image_vectors @ candidate_vectors.T).argmax(1)]


def _generate_captions(store: Store, knowledge: KnowledgeBase, members: pd.DataFrame, job: GenerationJob, k: int,
                       device: str, run_id: str = "") -> tuple[int, int]:
    """Caption `members` (listed images) batch by batch; returns (new rows, items with a KB hit guarded)."""
    generator = cached_generator(job.spec, job.model_dir, device)
    guarded = 0
    with BatchedWriter(store, CAPTION_PREDICTIONS, "pred_id") as writer:  # a commit per batch
        for batch in batches(members, job.spec.batch_size):
            started = time.perf_counter()
            image_ids = batch["image_id"].tolist()
            if job.use_retrieval:
                vectors = vectors_by_id(store, knowledge.image_table, image_ids, "image_id")
                neighbours = search(store, knowledge.image_table, vectors, k, where=knowledge.where,
                                    guard=stored_guard(store, knowledge, image_ids))
                # `caption` is what BLIP / VLM prompts show; `captions` all of the neighbour's, for generators
                # that show more (SmallCap).
                contexts = [[{"image_id": i, "caption": knowledge.captions[i], "captions": knowledge.references_of(i),
                              "score": s} for i, s in zip(ids, scores) if knowledge.captions.get(i)]
                            [: job.spec.context_items] for ids, scores in zip(neighbours.ids, neighbours.scores)]
            else:
                neighbours = Neighbours.none(len(batch))
                contexts = [[] for _ in range(len(batch))]
            requests = model_requests(store, knowledge, generator, image_ids, [None] * len(batch), contexts,
                                      job.spec.context_images)
            read = time.perf_counter()
            generations = generator.generate(requests, "caption")
            rows = caption_rows(job, knowledge, batch, neighbours, [g.text for g in generations], run_id,
                                [g.prompt for g in generations])
            writer.add(rows)
            guarded += sum(n > 0 for n in neighbours.guarded)
            log_batch("caption", job, len(batch), started, read)
    return writer.new_rows, guarded


def caption_rows(job: GenerationJob, knowledge: KnowledgeBase, members: pd.DataFrame, neighbours: Neighbours,
                 predictions: list[str], run_id: str = "", prompts: list[str] | None = None) -> pa.Table:
    """The `caption_predictions` rows of one job over `members` (listed images), keyed by (job, listing)."""

    n = len(members)
    now = datetime.now(UTC)
    return pa.Table.from_pydict(
        {
            "pred_id": pred_ids(job.job_id, members["member_id"].tolist()), "job_id": [job.job_id] * n,
            "dataset": members["dataset"].tolist(), "split": members["split"].tolist(),
            "member_id": members["member_id"].tolist(), "image_id": members["image_id"].tolist(),
            "prediction": predictions, "reference": members["caption"].tolist(), "variant": [job.variant] * n,
            "kb": [knowledge.label] * n, "neighbour_ids": neighbours.ids, "neighbour_scores": neighbours.scores,
            "near_duplicates": neighbours.guarded, "model_tag": [knowledge.model_tag] * n,
            "generator": [job.tag] * n, "generator_spec": [job.spec_json()] * n, "prompt": prompts or [""] * n,
            "kb_version": [knowledge.fingerprint] * n,
            "run_id": [run_id] * n, "created_at": [now] * n,
        },
        schema=CAPTION_PREDICTIONS_SCHEMA,
    )


def train_smallcap_for(store: Store, knowledge: KnowledgeBase, k: int, out_root: Path, device: str = "cpu",
                       config=None) -> Path:
    """Train (or reuse) the KB's SmallCap decoder on its captioned images, each prompted with the captions of
    its own neighbours, retrieved as inference will: never its own bytes or a near-duplicate of it."""
    from ravlm_core.generators.smallcap import META_FILE, SmallCapConfig
    from ravlm_core.generators.smallcap_train import smallcap_dir, train_smallcap

    config = config or SmallCapConfig()
    image_ids = sorted(knowledge.captions)
    if not image_ids:
        raise UserError(f"knowledge base {knowledge.label} has no captions to train smallcap on: caption it, or name "
                        f"another with --kb")
    # One example per (image, reference caption): COCO's five captions teach five ways to say it.
    references = {image_id: knowledge.references_of(image_id) for image_id in image_ids}
    examples = [(row, caption) for row, image_id in enumerate(image_ids) for caption in references[image_id]]
    captions = [c for _, c in examples]
    data = hashlib.blake2b("\x1f".join(captions).encode(), digest_size=8).hexdigest()  # the references too
    fingerprint = f"{knowledge.fingerprint}:k={k}:{data}"
    if (smallcap_dir(out_root, fingerprint, config) / META_FILE).exists():  # before retrieval: idle nights
        return smallcap_dir(out_root, fingerprint, config)
    vectors = vectors_by_id(store, knowledge.image_table, image_ids, "image_id")
    guard = stored_guard(store, knowledge, image_ids)
    neighbours = search(store, knowledge.image_table, vectors, k, where=knowledge.where, guard=guard,
                        exclude=None if guard.drop else image_ids)
    # Per image, per neighbour every caption of it: the context inference shows.
    shown = [[references[i] for i in ids if i in references] for ids in neighbours.ids]
    rows = [row for row, _ in examples]
    return train_smallcap(vectors[rows], [shown[r] for r in rows], captions, out_root, fingerprint, config, device)
