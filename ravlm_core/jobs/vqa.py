"""The retrieval-augmented VQA job over one part of a query set: items → KB neighbours asked the same question →
answers (neighbour voting, the fusion answerer, or a model generator) → prediction rows."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ravlm_core.errors import UserError
from ravlm_core.generators import MODEL_KINDS, GenerationJob
from ravlm_core.ids import pred_ids, qa_id_of
from ravlm_core.jobs.answerers import (
    FusionAnswerer,
    FusionConfig,
    appearance,
    fusion_dir,
    train_fusion,
    vote_answers,
)
from ravlm_core.jobs.parts import (
    JobResult,
    batches,
    cached_generator,
    left_to_do,
    log_batch,
    model_requests,
    part_members,
    part_range,
)
from ravlm_core.locations import local_model
from ravlm_core.model_files import timed_load
from ravlm_core.retrieval.knowledge import KnowledgeBase
from ravlm_core.retrieval.questions import Retrieved, no_neighbours, retrieve_for_items
from ravlm_core.retrieval.search import sets_filter, signatures_of
from ravlm_core.schemas import QA, QA_SCHEMA, VQA_PREDICTIONS, VQA_PREDICTIONS_SCHEMA
from ravlm_core.store import Store
from ravlm_core.writer import BatchedWriter

log = logging.getLogger(__name__)

ITEM_COLUMNS = ["qa_id", "member_id", "image_id", "dataset", "split", "question", "answer", "question_type"]


def read_items(store: Store, sets: list[tuple[str, str]], member_range: tuple[str, str] | None = None,
               labelled: bool = False) -> pd.DataFrame:
    """QA rows of the listed images of these sets (optionally one member id range), in a stable order."""
    where = sets_filter(sets)
    if member_range is not None:
        where += f" AND member_id >= '{member_range[0]}' AND member_id < '{member_range[1]}'"
    if labelled:
        where += " AND answer IS NOT NULL"
    items = store.read(QA, columns=ITEM_COLUMNS, where=where)
    if not items.num_rows:
        return QA_SCHEMA.empty_table().select(ITEM_COLUMNS).to_pandas()
    # Arrow → pandas keeps missing text as None (not NaN), so optional columns survive the round trip.
    items = items.to_pandas().astype(object).where(lambda frame: frame.notna(), None)
    return items.sort_values("qa_id", kind="stable").reset_index(drop=True)


def vqa_items(store: Store, dataset: str, split: str, part: str, questions: list[str] | None = None) -> pd.DataFrame:
    """The part's items: its QA pairs, or with `questions` (an unlabeled set) every question for every image."""
    if questions is None:
        return read_items(store, [(dataset, split)], part_range(part))
    members = part_members(store, dataset, split, part)
    rows = [{"qa_id": qa_id_of(m.member_id, m.image_id, q, None, None), "member_id": m.member_id,
             "image_id": m.image_id, "dataset": m.dataset, "split": m.split, "question": q, "answer": None,
             "question_type": None} for m in members.itertuples() for q in questions]
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


def run_vqa_part(store: Store, knowledge: KnowledgeBase, dataset: str, split: str, part: str, job: GenerationJob,
                 k: int, device: str = "cpu", run_id: str = "", questions: list[str] | None = None) -> JobResult:
    """Answer the questions about one part's images that `job` has not answered yet."""
    items = left_to_do(store, VQA_PREDICTIONS, "qa_id", vqa_items(store, dataset, split, part, questions), job)
    if items.empty:
        return JobResult(job.job_id, part, 0, 0, 0)
    if job.spec.kind in MODEL_KINDS:
        n_new, guarded = _generate_answers(store, knowledge, items, job, k, device, run_id)
    else:
        retrieved = retrieve_for_items(store, knowledge, items["image_id"].tolist(), items["question"].tolist(), k)
        answerer, looks = None, None
        if job.spec.kind == "builtin-fusion":  # voting reads neither the answerer nor the images' appearance
            answerer = timed_load(f"fusion answerer {job.model_dir}",
                                  lambda: FusionAnswerer(local_model(job.model_dir), device))
            looks = looks_of(store, items["image_id"])
        predictions = answer(knowledge, retrieved, job.variant, answerer, looks)
        rows = prediction_rows(job, knowledge, items, retrieved, predictions, run_id)
        n_new = store.upsert(VQA_PREDICTIONS, rows, "pred_id")
        guarded = sum(n > 0 for n in retrieved.neighbours.guarded)
    log.info("vqa[%s] %s/%s part %s: %d questions, %d with a near-duplicate left out", job.variant, dataset, split,
             part, len(items), guarded)
    return JobResult(job.job_id, part, len(items), n_new, guarded)


def answer(knowledge: KnowledgeBase, retrieved: Retrieved, variant: str, answerer: FusionAnswerer | None,
           looks: np.ndarray | None = None) -> list[str]:
    """Answers for each item by `variant` ("voting", or "fusion" / "fusion-no-retrieval" with a trained answerer,
    which reads the items' `looks` (`looks_of`) when it was trained with them)."""
    context = retrieved.context(knowledge)
    if variant == "voting":
        return vote_answers(context, knowledge.answers)
    if answerer is None:
        raise ValueError(f"variant {variant!r} needs a trained fusion answerer")
    return answerer.predict(retrieved.image_vectors, retrieved.question_vectors, context,
                            retrieved.allowed_answers(knowledge), looks)


def looks_of(store: Store, image_ids) -> np.ndarray:
    """float32 [n, da]: the `appearance` of each image, from the pixel signatures ingest stored."""
    image_ids = list(image_ids)
    signatures = signatures_of(store, set(image_ids))
    return appearance([signatures.get(i) for i in image_ids])


def _generate_answers(store: Store, knowledge: KnowledgeBase, items: pd.DataFrame, job: GenerationJob, k: int,
                      device: str, run_id: str = "") -> tuple[int, int]:
    """Answer `items` (rows of `vqa_items`) batch by batch; returns (new rows, items with a KB hit guarded)."""
    generator = cached_generator(job.spec, job.model_dir, device)
    guarded = 0
    with BatchedWriter(store, VQA_PREDICTIONS, "pred_id") as writer:  # a commit per batch
        for batch in batches(items, job.spec.batch_size):
            started = time.perf_counter()
            image_ids, questions = batch["image_id"].tolist(), batch["question"].tolist()
            if job.use_retrieval:
                retrieved = retrieve_for_items(store, knowledge, image_ids, questions, k)
                contexts = [vqa_context(knowledge, retrieved, i, job.spec.context_items) for i in range(len(batch))]
            else:
                retrieved = no_neighbours(len(batch))
                contexts = [[] for _ in range(len(batch))]
            requests = model_requests(store, knowledge, generator, image_ids, questions, contexts,
                                      job.spec.context_images)
            read = time.perf_counter()
            generations = generator.generate(requests, "vqa")
            rows = prediction_rows(job, knowledge, batch, retrieved, [g.text for g in generations], run_id,
                                   [g.prompt for g in generations])
            writer.add(rows)
            guarded += sum(n > 0 for n in retrieved.neighbours.guarded)
            log_batch("vqa", job, len(batch), started, read)
    return writer.new_rows, guarded


def vqa_context(knowledge: KnowledgeBase, retrieved: Retrieved, item: int, limit: int) -> list[dict]:
    """An item's neighbours for the prompt: caption, and the answers they got to the KB question matched to the
    item's (all their QA pairs when the question matched none closely)."""
    matched = int(retrieved.question_index[item])
    fallback = retrieved.question_sim[item] < knowledge.config.question_match_min
    context = []
    for image_id, score in zip(retrieved.neighbours.ids[item], retrieved.neighbours.scores[item]):
        questions, answers = knowledge.qa_by_image.get(image_id, (np.empty(0, int), np.empty(0, int)))
        qa = [(knowledge.questions[q], knowledge.answers[a]) for q, a in zip(questions, answers)
              if fallback or q == matched]
        context.append({"image_id": image_id, "caption": knowledge.captions.get(image_id), "qa": qa, "score": score})
        if len(context) == limit:
            break
    return context


def train_answerer(store: Store, knowledge: KnowledgeBase, k: int, out_root: Path, use_retrieval: bool,
                   device: str = "cpu", config: FusionConfig | None = None) -> Path:
    """Train (or reuse) a fusion answerer on the KB's own QA pairs, retrieving for each as inference will:
    never its own image or a near-duplicate of it."""
    config = _with_retrieval(config, use_retrieval)
    trained = trained_answerer(knowledge, k, out_root, use_retrieval, config)
    if trained is not None:  # looked up before retrieving for every KB question: nights stay idle
        return trained
    items = read_items(store, knowledge.sets, labelled=True)
    if items.empty:
        raise UserError(f"knowledge base {knowledge.label} has no question-answer pairs to train an answerer on: "
                        f"ingest its dataset with questions, or name another with --kb")
    retrieved = retrieve_for_items(store, knowledge, items["image_id"].tolist(), items["question"].tolist(), k,
                                   training=True)
    labels = np.array([knowledge.answer_index(a) for a in items["answer"]])
    return train_fusion(retrieved.image_vectors, retrieved.question_vectors, retrieved.context(knowledge), labels,
                        knowledge.answers, out_root, f"{knowledge.fingerprint}:k={k}", config, device,
                        looks_of(store, items["image_id"]))


def trained_answerer(knowledge: KnowledgeBase, k: int, out_root: Path, use_retrieval: bool,
                     config: FusionConfig | None = None) -> Path | None:
    """The folder of the fusion answerer already trained for this KB, k and config; None when there is none."""
    trained = fusion_dir(out_root, f"{knowledge.fingerprint}:k={k}", _with_retrieval(config, use_retrieval))
    return trained if (trained / "weights.safetensors").exists() else None


def _with_retrieval(config: FusionConfig | None, use_retrieval: bool) -> FusionConfig:
    return FusionConfig(**{**(config or FusionConfig()).__dict__, "use_retrieval": use_retrieval})


def prediction_rows(job: GenerationJob, knowledge: KnowledgeBase, items: pd.DataFrame, retrieved: Retrieved,
                    predictions: list[str], run_id: str = "", prompts: list[str] | None = None) -> pa.Table:
    """The `vqa_predictions` rows of one job over `items`: what its generator answered, and the prompts its model
    received (empty for the builtin answerers)."""
    n = len(items)
    now = datetime.now(timezone.utc)
    uses_neighbours = job.use_retrieval
    empty = [[] for _ in range(n)]
    columns = {name: items[name].tolist() for name in ITEM_COLUMNS}
    return pa.Table.from_pydict(
        {
            **columns,
            "pred_id": pred_ids(job.job_id, columns["qa_id"]),
            "job_id": [job.job_id] * n,
            "prediction": predictions,
            "variant": [job.variant] * n,
            "kb": [knowledge.label] * n,
            "neighbour_ids": retrieved.neighbours.ids if uses_neighbours else empty,
            "neighbour_scores": retrieved.neighbours.scores if uses_neighbours else empty,
            "near_duplicates": retrieved.neighbours.guarded if uses_neighbours else [0] * n,
            "model_tag": [knowledge.model_tag] * n,
            "generator": [job.tag] * n,
            "generator_spec": [job.spec_json()] * n,
            "prompt": prompts or [""] * n,
            "kb_version": [knowledge.fingerprint] * n,
            "run_id": [run_id] * n,
            "created_at": [now] * n,
        },
        schema=VQA_PREDICTIONS_SCHEMA,
    )
