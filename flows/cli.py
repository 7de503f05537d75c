"""`ravlm`: every command runs a flow; `--json` prints one JSON object on stdout for machines."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Retrieval-augmented vision-language batch jobs: ingest, embed, VQA, caption, eval, search.")
JSON = typer.Option(False, "--json", help="Print one JSON object on stdout (logs stay on stderr).")


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Optional[Path] = typer.Option(None, help="Where Parquet shards, models and the default store live."),
    lancedb_uri: Optional[str] = typer.Option(None, help="Any LanceDB URI (folder, s3://, gs://, db://)."),
    reports_dir: Optional[Path] = typer.Option(None, help="Where eval reports are written (default ./reports)."),
    encoder: Optional[str] = typer.Option(None, help='"builtin", a local model folder, or a hub id.'),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:1, ..."),
    k: Optional[int] = typer.Option(None, help="Neighbours retrieved per item."),
    kb_split: Optional[str] = typer.Option(None, help="The split retrieval searches (default: train)."),
    runner: Optional[str] = typer.Option(None, help="threads, dask or ray."),
    runner_address: Optional[str] = typer.Option(None, help="Address of an existing Dask / Ray cluster."),
) -> None:
    given = {"data_dir": data_dir, "lancedb_uri": lancedb_uri, "reports_dir": reports_dir, "encoder": encoder,
             "device": device, "k": k, "kb_split": kb_split,
             "runner": runner, "runner_address": runner_address}
    ctx.obj = {key: str(value) if isinstance(value, Path) else value for key, value in given.items() if value is not None}


def _run(ctx: typer.Context, flow, *args, **kwargs):
    """Run a flow on the configured task runner with the CLI's setting overrides."""
    from flows.common import settings_from, task_runner

    overrides = ctx.obj or {}
    return flow.with_options(task_runner=task_runner(settings_from(overrides)))(*args, overrides=overrides, **kwargs)


def _emit(result, as_json: bool, human) -> None:
    if as_json:
        typer.echo(json.dumps(result, default=str))
    else:
        human(result)


def _print_summary(result: dict) -> None:
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(result, max_length=12, max_depth=3))


@app.command()
def demo(ctx: typer.Context, as_json: bool = JSON) -> None:
    """The whole DAG on the embedded easy-VQA dataset: ingest, train heads, embed, VQA, caption, eval, report."""
    from flows.pipeline import demo_flow

    result = _run(ctx, demo_flow)
    _emit(result, as_json, _print_eval)


@app.command()
def ingest(ctx: typer.Context, source: str = typer.Argument(..., help='"easy-vqa" or a folder of images.'),
           dataset: Optional[str] = typer.Option(None, help="Dataset name (default: the folder's name)."),
           manifest: Optional[Path] = typer.Option(None, help="Manifest file (default: manifest.* in the folder)."),
           as_json: bool = JSON) -> None:
    """Ingest images (+ captions, QA pairs) into Parquet shards and the `images` / `qa` tables."""
    from flows.ingest import ingest_flow

    name = dataset or (source if source == "easy-vqa" else Path(source).resolve().name)
    result = _run(ctx, ingest_flow, source, name, str(manifest) if manifest else None)
    _emit(result, as_json, _print_ingest)


@app.command()
def embed(ctx: typer.Context, dataset: list[str] = typer.Option(None, help="Datasets to embed (default: all)."),
          retrain_encoder: bool = typer.Option(False, help="Retrain the built-in heads on everything ingested."),
          as_json: bool = JSON) -> None:
    """Embed new images and texts with the encoder and refresh the indexes."""
    from flows.embed import embed_flow

    _emit(_run(ctx, embed_flow, dataset or None, retrain_encoder), as_json, _print_summary)


@app.command()
def vqa(ctx: typer.Context, dataset: str = typer.Option(...), split: str = "test",
        variant: str = typer.Option("fusion", help="fusion, voting, or fusion-no-retrieval."),
        no_retrieval: bool = typer.Option(False, help="Shorthand for --variant fusion-no-retrieval."),
        as_json: bool = JSON) -> None:
    """Retrieval-augmented VQA over every question of a dataset split, into `vqa_predictions`."""
    from flows.jobs import vqa_flow

    result = _run(ctx, vqa_flow, dataset, split, "fusion-no-retrieval" if no_retrieval else variant)
    _emit(result, as_json, _print_summary)


@app.command()
def caption(ctx: typer.Context, dataset: str = typer.Option(...), split: str = "test",
            variant: str = typer.Option("consensus", help="consensus (neighbours) or direct (no neighbours)."),
            as_json: bool = JSON) -> None:
    """Retrieval-augmented captions for every image of a dataset split, into `caption_predictions`."""
    from flows.jobs import caption_flow

    _emit(_run(ctx, caption_flow, dataset, split, variant), as_json, _print_summary)


@app.command(name="eval")
def evaluate(ctx: typer.Context, dataset: str = typer.Option(...), split: str = "test", as_json: bool = JSON) -> None:
    """Metrics with and without retrieval, an HTML report, a Prefect artifact and an `eval_runs` row."""
    from flows.evaluate import eval_flow

    _emit(_run(ctx, eval_flow, dataset, split), as_json, _print_eval)


@app.command()
def search(ctx: typer.Context, text: Optional[str] = typer.Argument(None, help="Text query."),
           image: Optional[Path] = typer.Option(None, help="Image query (a file)."), top_k: int = typer.Option(10, "-k"),
           dataset: Optional[str] = None, split: Optional[str] = None, as_json: bool = JSON) -> None:
    """Text→image or image→image search."""
    from flows.query import search_flow

    if (text is None) == (image is None):
        raise typer.BadParameter("give a text query or --image PATH (exactly one)")
    hits = _run(ctx, search_flow, text, str(image) if image else None, top_k, dataset, split)
    _emit(hits, as_json, _print_hits)


@app.command()
def ask(ctx: typer.Context, image: Path, question: str, dataset: str = "easy-vqa", as_json: bool = JSON) -> None:
    """Answer a question about an image, retrieving neighbours from a dataset's knowledge base."""
    from flows.query import ask_flow

    result = _run(ctx, ask_flow, str(image), question, dataset)
    _emit(result, as_json, lambda r: (typer.echo(f"{r.get('answer', r['voting'])}"), _print_hits(r["neighbours"])))


@app.command()
def sql(ctx: typer.Context, query: str, as_json: bool = JSON) -> None:
    """SQL over the store's tables with DuckDB, e.g. ravlm sql "select answer, count(*) from qa group by 1"."""
    from ravlm_core.analytics import run_sql
    from flows.common import settings_from

    frame = run_sql(settings_from(ctx.obj).store_uri, query)
    _emit(json.loads(frame.to_json(orient="records")), as_json, lambda _: typer.echo(frame.to_string(max_rows=50)))


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console().print(table)


def _print_hits(hits: list[dict]) -> None:
    _table("neighbours", ["score", "image_id", "dataset", "split", "caption"],
           [[h.get("score"), h.get("image_id", "")[:12], h.get("dataset"), h.get("split"), h.get("caption")] for h in hits])


def _print_ingest(result: dict) -> None:
    typer.echo(f"{result['dataset']}: {result['images_seen']} images seen, {result['new_images']} new, "
               f"{result['new_qa']} new QA pairs, {len(result['shards'])} shards written")
    if result["bad_rows"]:
        _table("skipped (fix and rerun: nothing already written is lost)", ["where", "why"],
               [[b["ref"], b["reason"]] for b in result["bad_rows"]])


def _print_eval(result: dict) -> None:
    result = result.get("eval", result)
    rows = []
    for section in ("vqa", "caption"):
        for key in ("accuracy", "macro_f1", "bleu4", "rouge_l", "cider"):
            if key in result.get(section, {}):
                without = result[section].get("without_retrieval", {}).get(key)
                rows.append([f"{section} {key}", f"{result[section][key]:.4f}",
                             "—" if without is None else f"{without:.4f}"])
    if "voting" in result.get("vqa", {}):
        rows.append(["vqa accuracy (neighbour voting)", f"{result['vqa']['voting']['accuracy']:.4f}", "—"])
    for direction, scores in result.get("retrieval", {}).items():
        rows += [[f"{direction} {m}", f"{v:.4f}", "—"] for m, v in scores.items() if m.startswith(("recall", "ndcg"))]
    _table(f"eval {result.get('run_id', '')}", ["metric", "with retrieval", "without retrieval"], rows)
    typer.echo(f"report: {result.get('report')}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
