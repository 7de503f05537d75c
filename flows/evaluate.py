"""Evaluate flow: run the jobs to compare (with / without retrieval), then metrics → report → eval_runs."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

from prefect import flow, get_run_logger

from flows.common import RUN_HOOKS, resolve_run_encoder, run_name, settings_from, task_runner
from flows.jobs import caption_flow, retrieval_settings, vqa_flow
from ravlm_core.evaluate.scoring import latest_eval_run, split_contents
from ravlm_core.generators import GeneratorSpec, without_retrieval
from ravlm_core.jobs.parts import check_query_set
from ravlm_core.retrieval.knowledge import parse_kb
from ravlm_core.store import Store
from tasks.evaluate import evaluate_run

# What `ravlm eval` compares when no --generator is given: the first of each task fills the vqa / caption keys.
DEFAULT_GENERATORS = {"vqa": ("builtin-fusion",), "caption": ("builtin-transfer", "smallcap")}


@flow(name="eval", flow_run_name=run_name("eval", "dataset", "split"), **RUN_HOOKS)
def eval_flow(dataset: str, split: str = "test", kb: list[str] | None = None, questions: str | None = None,
              generators: list[str] | None = None, only_if_changed: bool = False, overrides: dict | None = None) -> dict:
    """Evaluate the query set `dataset`/`split` against the knowledge base `kb` (default: its train split).

    Each generator (specs, see ravlm_core.generators; default: DEFAULT_GENERATORS) runs with and without
    retrieval, except those made of retrieval (caption transfer: its `without_retrieval` says "not applicable");
    the first one of each task fills the `vqa` / `caption` keys, the others go under `generators`. VQA voting
    and nearest-caption (the KB caption nearest the image) always run as baselines, under `voting` and
    `nearest_caption`. Text→image retrieval is scored too (recall@K, hit@K, nDCG, MRR). Metrics
    are computed where the query set has ground truth; the result says where it has none. With `only_if_changed`
    (the nightly), a run whose jobs are those of the last evaluation and added no prediction returns that
    evaluation (`"unchanged": true`) instead of writing the same report again."""
    settings = settings_from(overrides)
    runner = task_runner(settings)
    kb_ref = parse_kb(kb, dataset, settings.kb_split)
    specs = {g: GeneratorSpec.parse(g) for g in generators or []}
    chosen = {task: [g for g, spec in specs.items() if spec.serves(task)] or list(DEFAULT_GENERATORS[task])
              for task in DEFAULT_GENERATORS}
    encoder = resolve_run_encoder(settings, settings.torch_device())
    store = Store(settings.store_uri)
    check_query_set(store, dataset, split)
    has = split_contents(store, dataset, split, list(kb_ref.sets))
    has["qa"] = has["qa"] or bool(questions)
    for what, found in has.items():
        if not found:
            get_run_logger().warning("no %s jobs: %s/%s has no %s, or the knowledge base %s has none to retrieve",
                                     what, dataset, split, "questions" if what == "qa" else "images", kb_ref.label)
    # The subflows take the KB as resolved here, in its JSON spelling, and the same overrides.
    common = {"dataset": dataset, "split": split, "kb": kb_ref.to_json(), "overrides": overrides}
    vqa = vqa_flow.with_options(task_runner=runner)
    caption = caption_flow.with_options(task_runner=runner)
    jobs: dict = {"generators": {"vqa": {}, "caption": {}}}

    new_rows = 0

    def both(task: str, subflow, generator: str, **extra) -> None:
        """With and without retrieval; a generator made of retrieval (caption transfer) has no run without, and
        its `without` job is None (the report says "not applicable")."""
        nonlocal new_rows
        results = {"with": subflow(**common, **extra, generator=generator, no_retrieval=False)}
        if without_retrieval(GeneratorSpec.parse(generator)) is None:
            results["without"] = subflow(**common, **extra, generator=generator, no_retrieval=True)
        new_rows += sum(r["new_rows"] for r in results.values())
        ids = {key: results[key]["job_id"] if key in results else None for key in ("with", "without")}
        if generator == chosen[task][0]:
            jobs[task], jobs[f"{task}_without_retrieval"] = ids["with"], ids["without"]
        else:
            jobs["generators"][task][generator] = ids

    if has["qa"]:
        for generator in chosen["vqa"]:
            both("vqa", vqa, generator, questions=questions)
        voting = vqa(**common, generator="builtin-vote", questions=questions, no_retrieval=False)
        jobs["vqa_voting"], new_rows = voting["job_id"], new_rows + voting["new_rows"]
    if has["captions"]:
        for generator in chosen["caption"]:
            both("caption", caption, generator)
        # The KB caption nearest each image: a search of captions, reported beside transfer, never as "without".
        nearest = caption(**common, generator="nearest-caption", no_retrieval=False)
        jobs["caption_nearest"], new_rows = nearest["job_id"], new_rows + nearest["new_rows"]
    if only_if_changed and not new_rows:
        last = latest_eval_run(store, dataset, split)
        if last and json.loads(last["config"]).get("jobs") == jobs:
            get_run_logger().info("%s/%s: nothing changed since %s; its report stands: %s", dataset, split,
                                  last["run_id"], last["report"])
            return {"run_id": last["run_id"], "report": last["report"], "unchanged": True,
                    **json.loads(last["metrics"])}
    run_id = f"eval-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    config = {"encoder": encoder.model_tag, "k": settings.k, "kb": kb_ref.label, "dataset": dataset,
              "split": split, "retrieval": retrieval_settings(settings), "generators": chosen, "jobs": jobs}
    return evaluate_run(store_uri=settings.store_uri, model_tag=encoder.model_tag, dataset=dataset, split=split,
                        jobs=jobs, run_id=run_id, reports_dir=str(settings.reports_dir), config=config)
