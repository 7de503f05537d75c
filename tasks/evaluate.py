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
    """`jobs` maps roles (vqa, vqa_without_retrieval, vqa_voting, caption, caption_without_retrieval) to job ids,
    and `generators` → task → generator spec → {"with": job id, "without": job id} for further generators."""
    store = Store(store_uri)
    results: dict = {}
    if "vqa" in jobs:
        results["vqa"] = scoring.vqa_job_metrics(store, jobs["vqa"])
        for role, key in (("vqa_without_retrieval", "without_retrieval"), ("vqa_voting", "voting")):
            if role in jobs:
                results["vqa"][key] = scoring.vqa_job_metrics(store, jobs[role])
    text_to_image = scoring.text_to_image_metrics(store, model_tag, dataset, split)
    if text_to_image:
        results["retrieval"] = {"text_to_image": text_to_image}
    if "caption" in jobs:
        results["caption"] = scoring.caption_job_metrics(store, jobs["caption"])
        if "caption_without_retrieval" in jobs:
            results["caption"]["without_retrieval"] = scoring.caption_job_metrics(store, jobs["caption_without_retrieval"])
    # Further generators, each with and without retrieval, beside the chosen one.
    for kind, score in (("vqa", scoring.vqa_job_metrics), ("caption", scoring.caption_job_metrics)):
        others = jobs.get("generators", {}).get(kind, {})
        if others and kind in results:
            results[kind]["generators"] = {name: {**score(store, ids["with"]),
                                                  "without_retrieval": score(store, ids["without"])}
                                           for name, ids in others.items()}
    chosen = {task: names[0] for task, names in config.get("generators", {}).items()}
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
    if task == "vqa":
        labelled["builtin-vote"] = jobs.get("vqa_voting")
    for name, ids in jobs.get("generators", {}).get(task, {}).items():
        labelled.update({name: ids["with"], f"{name} without retrieval": ids["without"]})
    return {label: job for label, job in labelled.items() if job}


def _slug(text: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return "".join(c if c.isalnum() else "-" for c in text.lower())
