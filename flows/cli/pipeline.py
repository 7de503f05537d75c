"""The commands that run a Prefect flow: ingest, embed, vqa, caption, eval, and demo / nightly / serve over them.

Each imports its flow inside the function: Prefect's import costs seconds that the interactive commands skip."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer._click.exceptions import MissingParameter  # typer vendors click: its own classes

from flows.cli import render
from flows.cli.options import GENERATOR_HELP, Json, Kb, NoRetrieval, QuerySet, SourceFormat, Split, deprecated, pick

ROWS_REJECTED = 3  # exit code: done, but rows were rejected (listed with file, row and reason)


def run_flow(ctx: typer.Context, flow, **parameters):
    """Run a flow on the configured task runner, with the global options as its setting overrides."""
    from flows.common import settings_from, task_runner
    from flows.errors import quiet_user_errors

    if not ctx.meta.get("debug"):
        quiet_user_errors()
    overrides = ctx.obj or {}
    return flow.with_options(task_runner=task_runner(settings_from(overrides)))(**parameters, overrides=overrides)


def _query_set(given: Optional[str], old: Optional[str]) -> str:
    dataset = pick(given, old)
    if dataset is None:
        raise MissingParameter(param_type="argument", param_hint="'DATASET'")
    return dataset


def _optional_path(path: Optional[Path]) -> Optional[str]:
    return str(path) if path else None  # flow parameters stay JSON-able


def demo(ctx: typer.Context, as_json: Json = False) -> None:
    """The whole DAG on the embedded easy-VQA dataset: ingest, train heads, embed, VQA, caption, eval, report."""
    from flows.pipeline import demo_flow

    render.emit(run_flow(ctx, demo_flow), as_json, render.evaluation)


def serve(ctx: typer.Context) -> None:
    """Serve every deployment from this process: the scheduled nightly (RAVLM_NIGHTLY_CRON in
    RAVLM_NIGHTLY_TIMEZONE) and each stage for `prefect deployment run`. Needs a Prefect server (PREFECT_API_URL)."""
    from flows.common import settings_from
    from flows.serve import serve_all

    serve_all(settings_from(ctx.obj))


def nightly(ctx: typer.Context,
            source: Annotated[Optional[list[str]], typer.Option(
                help="SOURCE or SOURCE=DATASET, repeatable (default: easy-vqa): what the scheduled deployment "
                "re-indexes.")] = None,
            evaluate: Annotated[bool, typer.Option("--evaluate/--skip-eval",
                                                   help="Evaluate each dataset's test split.")] = True,
            as_json: Json = False) -> None:
    """The scheduled job by hand: ingest every source (only what changed does work), embed, evaluate, compact."""
    from flows.pipeline import nightly_flow

    sources = []
    for spec in source or ["easy-vqa"]:
        path, _, name = spec.partition("=")
        sources.append({"source": path, "dataset": name or (path if path == "easy-vqa" else Path(path).resolve().name)})
    render.emit(run_flow(ctx, nightly_flow, sources=sources, evaluate=evaluate), as_json, render.summary)


def ingest(ctx: typer.Context,
           source: Annotated[str, typer.Argument(help='"easy-vqa" or a folder of images.', show_default=False)],
           dataset: Annotated[Optional[str], typer.Option(help="Dataset name (default: the folder's name).")] = None,
           manifest: Annotated[Optional[Path], typer.Option(
               help="Manifest file (default: manifest.* in the folder).")] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="Count added / changed / re-annotated / removed "
                                                 "images without writing anything.")] = False,
           keep_removed: Annotated[bool, typer.Option("--keep-removed", help="Mark images gone from the source as "
                                                      "removed instead of deleting their rows.")] = False,
           source_format: Annotated[SourceFormat, typer.Option(
               help="auto (a manifest if there is one, else every image), manifest, folder, coco (captions JSON + "
               "images) or vqav2 (questions + annotations JSON + COCO images).")] = SourceFormat.auto,
           annotations: Annotated[Optional[Path], typer.Option(
               help="coco: the captions_*.json; vqav2: the annotations JSON (default: found in the folder).")] = None,
           questions: Annotated[Optional[Path], typer.Option(
               help="vqav2: the questions JSON (default: found in the folder).")] = None,
           as_json: Json = False,
           old_format: Annotated[Optional[SourceFormat], deprecated("--format", "--source-format")] = None) -> None:
    """Make a dataset say what its source says: new images, changed bytes, new annotations and removals.

    Exits 3 when rows were rejected (listed with file, row and reason; the rest is ingested)."""
    from flows.ingest import ingest_flow

    result = run_flow(ctx, ingest_flow, source=source,
                      dataset=dataset or (source if source == "easy-vqa" else Path(source).resolve().name),
                      manifest=_optional_path(manifest), dry_run=dry_run, keep_removed=keep_removed,
                      source_format=pick(source_format, old_format, SourceFormat.auto).value,
                      annotations=_optional_path(annotations), questions=_optional_path(questions))
    render.emit(result, as_json, render.ingested)
    if result["bad_rows"]:
        raise typer.Exit(ROWS_REJECTED)


def embed(ctx: typer.Context,
          retrain_encoder: Annotated[bool, typer.Option(
              help="Retrain the built-in heads on everything ingested.")] = False,
          as_json: Json = False) -> None:
    """Embed every listed image and text the encoder's tables lack, and refresh the indexes."""
    from flows.embed import embed_flow

    render.emit(run_flow(ctx, embed_flow, retrain_encoder=retrain_encoder), as_json, render.summary)


def vqa(ctx: typer.Context, dataset: QuerySet = None, split: Split = "test", kb: Kb = None,
        questions: Annotated[Optional[Path], typer.Option(
            help="For an unlabeled query set: questions to ask of every image, one per line (or a .jsonl / .csv "
            "`question` column).")] = None,
        generator: Annotated[str, typer.Option(help=GENERATOR_HELP + " VQA: builtin-fusion, builtin-vote, "
                                               "blip:MODEL, vlm:MODEL.")] = "builtin-fusion",
        no_retrieval: NoRetrieval = False, as_json: Json = False,
        old_dataset: Annotated[Optional[str], deprecated("--dataset", "the DATASET argument")] = None) -> None:
    """Retrieval-augmented VQA over every question of a query set, into `vqa_predictions`."""
    from flows.jobs import vqa_flow

    result = run_flow(ctx, vqa_flow, dataset=_query_set(dataset, old_dataset), split=split, generator=generator,
                      kb=kb or None, questions=_optional_path(questions), no_retrieval=no_retrieval)
    render.emit(result, as_json, render.summary)


def caption(ctx: typer.Context, dataset: QuerySet = None, split: Split = "test", kb: Kb = None,
            generator: Annotated[str, typer.Option(help=GENERATOR_HELP + " Captions: builtin-transfer, "
                                                   "nearest-caption, smallcap, blip:MODEL, vlm:MODEL.")]
            = "builtin-transfer",
            no_retrieval: NoRetrieval = False, as_json: Json = False,
            old_dataset: Annotated[Optional[str], deprecated("--dataset", "the DATASET argument")] = None) -> None:
    """Retrieval-augmented captions for every image of a query set, into `caption_predictions`."""
    from flows.jobs import caption_flow

    result = run_flow(ctx, caption_flow, dataset=_query_set(dataset, old_dataset), split=split, generator=generator,
                      kb=kb or None, no_retrieval=no_retrieval)
    render.emit(result, as_json, render.summary)


def evaluate(ctx: typer.Context, dataset: QuerySet = None, split: Split = "test", kb: Kb = None,
             questions: Annotated[Optional[Path], typer.Option(
                 help="Questions for an unlabeled query set (see vqa).")] = None,
             generator: Annotated[Optional[list[str]], typer.Option(
                 help=GENERATOR_HELP + " Repeatable: the first for each task fills the vqa / caption keys, the "
                 "others are compared beside it.")] = None,
             as_json: Json = False,
             old_dataset: Annotated[Optional[str], deprecated("--dataset", "the DATASET argument")] = None) -> None:
    """Metrics with and without retrieval, an HTML report, a Prefect artifact and an `eval_runs` row."""
    from flows.evaluate import eval_flow

    result = run_flow(ctx, eval_flow, dataset=_query_set(dataset, old_dataset), split=split, kb=kb or None,
                      questions=_optional_path(questions), generators=generator or None)
    render.emit(result, as_json, render.evaluation)
