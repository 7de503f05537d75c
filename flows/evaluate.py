"""Evaluate flow: run the jobs to compare (with / without retrieval), then metrics → report → eval_runs."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from prefect import flow, get_run_logger

from flows.common import settings_from, task_runner
from flows.jobs import caption_flow, vqa_flow
from ravlm_core.evaluate import split_contents
from ravlm_core.store import Store
from tasks.embed import resolve_encoder
from tasks.evaluate import evaluate_run


@flow(name="eval")
def eval_flow(dataset: str, split: str = "test", overrides: dict | None = None) -> dict:
    """Evaluate `dataset`/`split`: VQA (fusion, no-retrieval, voting), captions (consensus, direct), text→image."""
    settings = settings_from(overrides)
    runner = task_runner(settings)
    encoder = resolve_encoder(settings.encoder, settings.store_uri, str(settings.models_dir), settings.torch_device())
    has = split_contents(Store(settings.store_uri), dataset, split, settings.kb_split)
    for what, found in has.items():
        if not found:
            get_run_logger().warning(
                "no %s evaluation: %s/%s or its knowledge base split %r has no %s (see --kb-split)",
                what, dataset, split, settings.kb_split, "QA pairs" if what == "qa" else what)
    jobs: dict[str, str] = {}
    if has["qa"]:
        for role, variant in (("vqa", "fusion"), ("vqa_without_retrieval", "fusion-no-retrieval"),
                              ("vqa_voting", "voting")):
            jobs[role] = vqa_flow.with_options(task_runner=runner)(dataset, split, variant, overrides)["job_id"]
    if has["captions"]:
        for role, variant in (("caption", "consensus"), ("caption_without_retrieval", "direct")):
            jobs[role] = caption_flow.with_options(task_runner=runner)(dataset, split, variant, overrides)["job_id"]
    run_id = f"eval-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    config = {"encoder": encoder["model_tag"], "k": settings.k, "kb_split": settings.kb_split, "dataset": dataset,
              "split": split, "jobs": jobs}
    return evaluate_run(settings.store_uri, encoder["model_tag"], dataset, split, jobs, run_id,
                        str(settings.reports_dir), config)
