"""The whole DAG as subflows: `demo` on the embedded easy-VQA dataset, `nightly` for scheduled re-indexing."""
from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import RUN_HOOKS, run_name, settings_from, task_runner
from flows.embed import embed_flow
from flows.evaluate import eval_flow
from flows.ingest import ingest_flow
from tasks.index import compact_store

EMBEDDED_DATASET = "easy-vqa"


@flow(name="demo", flow_run_name=run_name("demo"), **RUN_HOOKS)
def demo_flow(overrides: dict | None = None) -> dict:
    """Ingest easy-VQA → train heads + embed + index → VQA + captions with / without retrieval → eval + report."""
    runner = task_runner(settings_from(overrides))
    ingested = ingest_flow.with_options(task_runner=runner)(source=EMBEDDED_DATASET, dataset=EMBEDDED_DATASET,
                                                            overrides=overrides)
    embedded = embed_flow.with_options(task_runner=runner)(retrain_encoder=False, overrides=overrides)
    evaluated = eval_flow.with_options(task_runner=runner)(dataset=EMBEDDED_DATASET, split="test", overrides=overrides)
    get_run_logger().info("report: %s", evaluated["report"])
    return {"ingest": ingested, "embed": embedded, "eval": evaluated}


@flow(name="nightly", flow_run_name=run_name("nightly"), **RUN_HOOKS)
def nightly_flow(sources: list[dict] | None = None, evaluate: bool = True, overrides: dict | None = None) -> dict:
    """Incremental re-index: ingest each source (only new images do work), embed what is new, refresh indexes,
    and evaluate each dataset's test split.

    `sources` (default: the `nightly_sources` setting): [{"source": "easy-vqa" | folder, "dataset": name, "manifest": optional path, "format": optional
    (coco, vqav2, ...), "annotations" / "questions": optional paths, "kb": optional ["DATASET[:SPLIT]", ...] to
    evaluate its test split against}].

    A night with nothing new loads no model and writes no report: evaluation keeps the last report when every
    job of it is unchanged. Old table versions are then dropped (`keep_versions_days`).
    """
    settings = settings_from(overrides)
    sources = sources or settings.nightly_sources
    runner = task_runner(settings)
    ingested = [
        ingest_flow.with_options(task_runner=runner)(
            source=s["source"], dataset=s["dataset"], manifest=s.get("manifest"), source_format=s.get("format", "auto"),
            annotations=s.get("annotations"), questions=s.get("questions"), overrides=overrides)
        for s in sources
    ]
    embedded = embed_flow.with_options(task_runner=runner)(retrain_encoder=False, overrides=overrides)
    evaluated = [eval_flow.with_options(task_runner=runner)(dataset=s["dataset"], split="test", kb=s.get("kb"),
                                                            only_if_changed=True, overrides=overrides)
                 for s in sources] if evaluate else []
    compacted = compact_store(store_uri=settings.store_uri, keep_versions_days=settings.keep_versions_days)
    return {"ingest": ingested, "embed": embedded, "eval": evaluated, "compacted": compacted}
