"""Evaluation task: metrics from the prediction tables → HTML report, Prefect artifact and an `eval_runs` row."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ravlm_core.evaluate import report, scoring
from ravlm_core.schemas import CAPTION_PREDICTIONS, VQA_PREDICTIONS
from ravlm_core.store import Store


@task(cache_policy=NO_CACHE)
def evaluate_run(store_uri: str, model_tag: str, dataset: str, split: str, jobs: dict[str, str], run_id: str,
                 reports_dir: str, config: dict) -> dict:
    """`jobs` maps roles (vqa, vqa_without_retrieval, vqa_voting, caption, caption_without_retrieval,
    caption_nearest) to job ids, and `generators` → task → generator spec → {"with": job id, "without": job id} for
    further generators; a `without` of None is a generator made of retrieval, reported as not applicable."""
    store = Store(store_uri)
    score = {"vqa": scoring.vqa_job_metrics, "caption": scoring.caption_job_metrics}
    chosen = {task: names[0] for task, names in config.get("generators", {}).items()}

    def without(task: str, job: str | None, generator: str | None) -> dict:
        return score[task](store, job) if job else scoring.not_applicable(generator)

    results: dict = {}
    for kind, baseline in (("vqa", ("vqa_voting", "voting")), ("caption", ("caption_nearest", "nearest_caption"))):
        if kind not in jobs:
            continue
        results[kind] = score[kind](store, jobs[kind])
        if f"{kind}_without_retrieval" in jobs:
            results[kind]["without_retrieval"] = without(kind, jobs[f"{kind}_without_retrieval"], chosen.get(kind))
        if jobs.get(baseline[0]):
            results[kind][baseline[1]] = score[kind](store, jobs[baseline[0]])
        # Further generators, each with and without retrieval, beside the chosen one.
        others = jobs.get("generators", {}).get(kind, {})
        if others:
            results[kind]["generators"] = {name: {**score[kind](store, ids["with"]),
                                                  "without_retrieval": without(kind, ids["without"], name)}
                                           for name, ids in others.items()}
    text_to_image = scoring.text_to_image_metrics(store, model_tag, dataset, split)
    if text_to_image:
        results["retrieval"] = {"text_to_image": text_to_image}
    examples = [example for task, table in (("vqa", VQA_PREDICTIONS), ("caption", CAPTION_PREDICTIONS)) if task in jobs
                for example in scoring.job_examples(store, table, _labelled_jobs(task, jobs, chosen.get(task, task)))]
    title = f"ravlm eval: {dataset}/{split}"
    index = report.write_report(Path(reports_dir).resolve() / dataset / run_id, title, results, examples, config,
                                chosen)
    create_markdown_artifact(report.report_markdown(title, results, chosen), key=f"ravlm-eval-{_slug(dataset)}",
                             description=f"{title} ({run_id}); full report: {index}")
    scoring.record_eval_run(store, run_id, dataset, split, results, config, str(index))
    return {"run_id": run_id, "report": str(index), **results}


def _labelled_jobs(task: str, jobs: dict, chosen: str) -> dict[str, str]:
    """label -> job id of every job of `task`, the chosen generator with retrieval first."""
    labelled = {chosen: jobs[task], f"{chosen} without retrieval": jobs.get(f"{task}_without_retrieval")}
    labelled["builtin-vote" if task == "vqa" else "nearest-caption"] = jobs.get(
        "vqa_voting" if task == "vqa" else "caption_nearest")
    for name, ids in jobs.get("generators", {}).get(task, {}).items():
        labelled.update({name: ids["with"], f"{name} without retrieval": ids["without"]})
    return {label: job for label, job in labelled.items() if job}


def _slug(text: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return "".join(c if c.isalnum() else "-" for c in text.lower())
