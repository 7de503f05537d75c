"""Evaluate flow: run the jobs to compare (with / without retrieval), then metrics → report → eval_runs."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from prefect import flow, get_run_logger

from flows.common import settings_from, task_runner
from flows.jobs import caption_flow, retrieval_settings, vqa_flow
from ravlm_core.evaluate import split_contents
from ravlm_core.jobs import check_query_set
from ravlm_core.knowledge import kb_label, parse_kb
from ravlm_core.store import Store
from tasks.embed import resolve_encoder
from tasks.evaluate import evaluate_run


@flow(name="eval")
def eval_flow(dataset: str, split: str = "test", kb: list[str] | None = None, questions: str | None = None,
              overrides: dict | None = None) -> dict:
    """Evaluate the query set `dataset`/`split` against the knowledge base `kb` (default: its train split): VQA
    (fusion, no-retrieval, voting), captions (consensus, direct), text→image. Metrics are computed where the
    query set has ground truth; the result says where it has none."""
    settings = settings_from(overrides)
    runner = task_runner(settings)
    sets = parse_kb(kb, dataset, settings.kb_split)
    encoder = resolve_encoder(settings.encoder, settings.store_uri, str(settings.models_dir), settings.torch_device())
    store = Store(settings.store_uri)
    check_query_set(store, dataset, split)
    has = split_contents(store, dataset, split, sets)
    has["qa"] = has["qa"] or bool(questions)
    for what, found in has.items():
        if not found:
            get_run_logger().warning("no %s jobs: %s/%s has no %s, or the knowledge base %s has none to retrieve",
                                     what, dataset, split, "questions" if what == "qa" else "images",
                                     kb_label(sets))
    jobs: dict[str, str] = {}
    if has["qa"]:
        for role, variant in (("vqa", "fusion"), ("vqa_without_retrieval", "fusion-no-retrieval"),
                              ("vqa_voting", "voting")):
            jobs[role] = vqa_flow.with_options(task_runner=runner)(dataset, split, variant, kb, questions,
                                                                   overrides)["job_id"]
    if has["captions"]:
        for role, variant in (("caption", "consensus"), ("caption_without_retrieval", "direct")):
            jobs[role] = caption_flow.with_options(task_runner=runner)(dataset, split, variant, kb,
                                                                       overrides)["job_id"]
    run_id = f"eval-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    config = {"encoder": encoder["model_tag"], "k": settings.k, "kb": kb_label(sets), "dataset": dataset,
              "split": split, "retrieval": retrieval_settings(settings), "jobs": jobs}
    return evaluate_run(settings.store_uri, encoder["model_tag"], dataset, split, jobs, run_id,
                        str(settings.reports_dir), config)
