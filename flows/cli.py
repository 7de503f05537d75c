"""`ravlm`: every command runs a flow; `--json` prints one JSON object on stdout for machines."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Retrieval-augmented vision-language batch jobs: ingest, embed, VQA, caption, eval, search.")
JSON = typer.Option(False, "--json", help="Print one JSON object on stdout (logs stay on stderr).")
KB = typer.Option(None, "--kb", help="Knowledge base to retrieve from: DATASET[:SPLIT], repeatable "
                  "(default: the query dataset's train split).")
GENERATOR_HELP = ("What generates: KIND[:MODEL][,key=value...] (max_new_tokens, num_beams, batch_size, context_items, "
                  "context_images, prompt, dtype) or a JSON file of those fields.")
NO_RETRIEVAL = typer.Option(False, "--no-retrieval", help="Run the same generator with an empty context.")
# Exit codes: 0 done; 1 a failure (one line naming the shard or part, or a traceback when nothing names it); 2 a user
# error (one line); 3 done, but rows rejected.
UNIT_FAILED, USER_ERROR, ROWS_REJECTED = 1, 2, 3


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Optional[str] = typer.Option(None, help="Where Parquet shards, models and the default store live: a "
                                           "folder or a URI on object storage (s3://bucket/ravlm)."),
    lancedb_uri: Optional[str] = typer.Option(None, help="Any LanceDB URI (folder, s3://, gs://, db://)."),
    reports_dir: Optional[Path] = typer.Option(None, help="Where eval reports are written (default ./reports)."),
    encoder: Optional[str] = typer.Option(None, help='"builtin", a local model folder, or a hub id.'),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:1, ..."),
    k: Optional[int] = typer.Option(None, help="Neighbours retrieved per item."),
    kb_split: Optional[str] = typer.Option(None, help="The split retrieval searches (default: train)."),
    runner: Optional[str] = typer.Option(None, help="threads, dask or ray."),
    runner_address: Optional[str] = typer.Option(None, help="Address of an existing Dask / Ray cluster."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of user errors too."),
) -> None:
    ctx.meta["debug"] = debug
    given = {"data_dir": data_dir, "lancedb_uri": lancedb_uri, "reports_dir": reports_dir, "encoder": encoder,
             "device": device, "k": k, "kb_split": kb_split,
             "runner": runner, "runner_address": runner_address}
    ctx.obj = {key: str(value) if isinstance(value, Path) else value for key, value in given.items() if value is not None}


def _run(ctx: typer.Context, flow, *args, **kwargs):
    """Run a flow on the configured task runner with the CLI's setting overrides."""
    from flows.common import settings_from, task_runner
    from flows.errors import quiet_user_errors

    if not ctx.meta.get("debug"):
        quiet_user_errors()  # imports Prefect: only commands that run flows pay for it
    overrides = ctx.obj or {}
    return flow.with_options(task_runner=task_runner(settings_from(overrides)))(*args, overrides=overrides, **kwargs)


def _one_line(error: BaseException) -> tuple[str, int] | None:
    """The line to print and the exit code for a user error (2) or a failed unit of work that names itself (1)
    anywhere in the exception chain; None for anything else, which keeps its traceback."""
    from ravlm_core.errors import UnitFailed, UserError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UserError):
            return str(error), USER_ERROR
        if isinstance(error, UnitFailed):
            return str(error), UNIT_FAILED
        error = error.__cause__ or error.__context__
    return None


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
def serve(ctx: typer.Context) -> None:
    """Serve every deployment from this process: the scheduled nightly (RAVLM_NIGHTLY_CRON in
    RAVLM_NIGHTLY_TIMEZONE) and each stage for `prefect deployment run`. Needs a Prefect server (PREFECT_API_URL)."""
    from flows.common import settings_from
    from flows.serve import serve_all

    serve_all(settings_from(ctx.obj))


@app.command()
def nightly(ctx: typer.Context,
            source: Optional[list[str]] = typer.Option(None, help="SOURCE or SOURCE=DATASET, repeatable (default: "
                                                       "easy-vqa): what the scheduled deployment re-indexes."),
            evaluate: bool = typer.Option(True, "--evaluate/--skip-eval", help="Evaluate each dataset's test split."),
            as_json: bool = JSON) -> None:
    """The scheduled job by hand: ingest every source (only what changed does work), embed, evaluate, compact."""
    from flows.pipeline import nightly_flow

    sources = []
    for spec in source or ["easy-vqa"]:
        path, _, name = spec.partition("=")
        sources.append({"source": path, "dataset": name or (path if path == "easy-vqa" else Path(path).resolve().name)})
    _emit(_run(ctx, nightly_flow, sources, evaluate), as_json, _print_summary)


@app.command()
def ingest(ctx: typer.Context, source: str = typer.Argument(..., help='"easy-vqa" or a folder of images.'),
           dataset: Optional[str] = typer.Option(None, help="Dataset name (default: the folder's name)."),
           manifest: Optional[Path] = typer.Option(None, help="Manifest file (default: manifest.* in the folder)."),
           dry_run: bool = typer.Option(False, "--dry-run", help="Count added / changed / re-annotated / removed "
                                        "images without writing anything."),
           keep_removed: bool = typer.Option(False, "--keep-removed", help="Mark images gone from the source as "
                                             "removed instead of deleting their rows."),
           source_format: str = typer.Option("auto", "--format", help="auto (manifest if any, else every image), "
                                             "manifest, folder, coco (captions JSON + images) or vqav2 (questions "
                                             "+ annotations JSON + COCO images)."),
           annotations: Optional[Path] = typer.Option(None, help="coco: the captions_*.json; vqav2: the "
                                                      "annotations JSON (default: found in the folder)."),
           questions: Optional[Path] = typer.Option(None, help="vqav2: the questions JSON (default: found in the "
                                                    "folder)."),
           as_json: bool = JSON) -> None:
    """Make a dataset say what its source says: new images, changed bytes, new annotations and removals.

    Exits 3 when rows were rejected (listed with file, row and reason; the rest is ingested)."""
    from flows.ingest import ingest_flow

    name = dataset or (source if source == "easy-vqa" else Path(source).resolve().name)
    result = _run(ctx, ingest_flow, source, name, str(manifest) if manifest else None, dry_run, keep_removed,
                  source_format, str(annotations) if annotations else None, str(questions) if questions else None)
    _emit(result, as_json, _print_ingest)
    if result["bad_rows"]:
        raise typer.Exit(ROWS_REJECTED)


@app.command()
def embed(ctx: typer.Context,
          retrain_encoder: bool = typer.Option(False, help="Retrain the built-in heads on everything ingested."),
          as_json: bool = JSON) -> None:
    """Embed every listed image and text the encoder's tables lack, and refresh the indexes."""
    from flows.embed import embed_flow

    _emit(_run(ctx, embed_flow, retrain_encoder), as_json, _print_summary)


@app.command()
def vqa(ctx: typer.Context, dataset: str = typer.Option(..., help="The query set's dataset."),
        split: str = typer.Option("test", help="The query set's split."), kb: Optional[list[str]] = KB,
        questions: Optional[Path] = typer.Option(None, help="For an unlabeled query set: questions to ask of every "
                                                 "image, one per line (or a .jsonl / .csv `question` column)."),
        generator: str = typer.Option("builtin-fusion", help=GENERATOR_HELP + " VQA: builtin-fusion, builtin-vote, "
                                      "blip:MODEL, vlm:MODEL."),
        no_retrieval: bool = NO_RETRIEVAL, as_json: bool = JSON) -> None:
    """Retrieval-augmented VQA over every question of a query set, into `vqa_predictions`."""
    from flows.jobs import vqa_flow

    result = _run(ctx, vqa_flow, dataset, split, generator, kb or None, str(questions) if questions else None,
                  no_retrieval)
    _emit(result, as_json, _print_summary)


@app.command()
def caption(ctx: typer.Context, dataset: str = typer.Option(..., help="The query set's dataset."),
            split: str = typer.Option("test", help="The query set's split."), kb: Optional[list[str]] = KB,
            generator: str = typer.Option("builtin-transfer", help=GENERATOR_HELP + " Captions: builtin-transfer, "
                                          "smallcap, blip:MODEL, vlm:MODEL."),
            no_retrieval: bool = NO_RETRIEVAL, as_json: bool = JSON) -> None:
    """Retrieval-augmented captions for every image of a query set, into `caption_predictions`."""
    from flows.jobs import caption_flow

    _emit(_run(ctx, caption_flow, dataset, split, generator, kb or None, no_retrieval), as_json, _print_summary)


@app.command(name="eval")
def evaluate(ctx: typer.Context, dataset: str = typer.Option(..., help="The query set's dataset."),
             split: str = typer.Option("test", help="The query set's split."), kb: Optional[list[str]] = KB,
             questions: Optional[Path] = typer.Option(None, help="Questions for an unlabeled query set (see vqa)."),
             generator: Optional[list[str]] = typer.Option(None, help=GENERATOR_HELP + " Repeatable: the first "
                                                           "for each task fills the vqa / caption keys, the others "
                                                           "are compared beside it."),
             as_json: bool = JSON) -> None:
    """Metrics with and without retrieval, an HTML report, a Prefect artifact and an `eval_runs` row."""
    from flows.evaluate import eval_flow

    _emit(_run(ctx, eval_flow, dataset, split, kb or None, str(questions) if questions else None,
               generator or None), as_json, _print_eval)


SEARCH_WHERE = typer.Option(None, "--where", help="Filter on the images listing, repeatable (all must hold): "
                            "COLUMN=VALUE, COLUMN!=VALUE, COLUMN>VALUE (>=, <, <=), COLUMN~TEXT (contains, any case) "
                            "or 'COLUMN in A,B'. Columns: dataset, split, path, uri, caption, format, width, height, "
                            "extra, image_id, member_id, ingested_at. Values are always literals.")
OUTPUT_FORMAT = typer.Option("table", "--format", help="table, json, parquet or html (parquet and html need "
                             "--output).")
OUTPUT = typer.Option(None, "--output", "-o", help="The file --format parquet / html writes.")


@app.command()
def search(ctx: typer.Context, text: Optional[str] = typer.Argument(None, help="Text query."),
           image: Optional[Path] = typer.Option(None, help="Image query (a file)."),
           top_k: int = typer.Option(10, "-k", "--top-k", help="How many hits to return."),
           dataset: Optional[str] = typer.Option(None, help="Only images listed in this dataset."),
           split: Optional[str] = typer.Option(None, help="Only images listed in this split (of --dataset, or of any)."),
           where: Optional[list[str]] = SEARCH_WHERE,
           target: str = typer.Option("images", "--target", help="images, or texts: the captions and questions "
                                      "the encoder embedded (with --image: image→text), each with where it is used."),
           hybrid: bool = typer.Option(False, "--hybrid", help="Text queries: fuse the vector hits with full-text "
                                       "hits on the query's words (captions, or the texts), reranked."),
           reranker: str = typer.Option("rrf", help="With --hybrid: rrf (reciprocal rank fusion) or "
                                        "cross-encoder:FOLDER (a local sentence-transformers cross-encoder)."),
           output_format: str = OUTPUT_FORMAT, output: Optional[Path] = OUTPUT, as_json: bool = JSON) -> None:
    """Text→image, image→image or image→text search over the embedded store, optionally hybrid with full text.
    Runs here: no flow, no server, no training."""
    from flows.common import settings_from
    from ravlm_core.query.session import Session

    if (text is None) == (image is None):
        raise typer.BadParameter("give a text query or --image PATH (exactly one)")
    _check_output(output_format, output)
    session = Session(settings_from(ctx.obj))
    hits = session.search(text, image, top_k, dataset, split, where=where, target=target, hybrid=hybrid,
                          reranker=reranker)
    query_thumbnail = None
    if image is not None and output_format == "html":
        from ravlm_core.imaging import thumbnail_jpeg
        from ravlm_core.query.session import open_image

        query_thumbnail = thumbnail_jpeg(open_image(image))
    _write_results(hits, output_format, output, as_json, session.store, query_thumbnail)


@app.command()
def dedup(ctx: typer.Context,
          threshold: float = typer.Option(..., help="Cosine similarity in (0, 1] at or above which two images are "
                                          "near-duplicates (0.95 is a start; what is near depends on the encoder)."),
          dataset: Optional[str] = typer.Option(None, help="Only images listed in this dataset."),
          split: Optional[str] = typer.Option(None, help="Only images listed in this split (of --dataset, or of any)."),
          output_format: str = OUTPUT_FORMAT, output: Optional[Path] = OUTPUT, as_json: bool = JSON) -> None:
    """Groups of near-duplicate images (re-encoded, resized, brightened copies) over the pinned encoder's image
    vectors: one row per member with its group, its best similarity within the group and a listing. Byte-identical
    files are one image already. Runs here: no flow, no server."""
    from flows.common import settings_from
    from ravlm_core.query.session import Session

    _check_output(output_format, output)
    session = Session(settings_from(ctx.obj))
    _write_results(session.dedup(threshold, dataset, split), output_format, output, as_json, session.store)


def _check_output(output_format: str, output: Optional[Path]) -> None:
    from ravlm_core.errors import UserError

    if output_format not in ("table", "json", "parquet", "html"):
        raise UserError(f"--format {output_format!r}: use table, json, parquet or html")
    if output_format in ("parquet", "html") and output is None:
        raise UserError(f"--format {output_format} writes a file: give --output PATH")


def _write_results(hits, output_format: str, output: Optional[Path], as_json: bool, store,
                   query_thumbnail: bytes | None = None) -> None:
    """Print the hits (a table, or JSON rows), or write them to --output and say where."""
    if output_format in ("parquet", "html"):
        try:
            written = hits.write_parquet(output) if output_format == "parquet" else hits.write_html(output, store,
                                                                                                    query_thumbnail)
        except OSError as error:  # a missing folder, no permission, a full disk: the user's to fix
            from ravlm_core.errors import UserError, first_line

            raise UserError(f"cannot write --output {output}: {error.strerror or first_line(error)}") from None
        _emit({"output": str(written), "format": output_format, "rows": len(hits)}, as_json,
              lambda r: typer.echo(f"wrote {r['rows']} rows to {r['output']}"))
        return
    _emit(list(hits), as_json or output_format == "json", lambda _: _print_results(hits))


@app.command()
def ask(ctx: typer.Context, image: Path, question: str, kb: Optional[list[str]] = typer.Option(
        None, "--kb", help="Knowledge base: DATASET[:SPLIT], repeatable (default: easy-vqa:train)."),
        as_json: bool = JSON) -> None:
    """Answer a question about an image with the answerer `ravlm vqa` trained for the knowledge base."""
    from flows.common import settings_from
    from ravlm_core.query.session import Session

    result = Session(settings_from(ctx.obj)).ask(image, question, kb or None)
    _emit(result, as_json, lambda r: (typer.echo(f"{r.get('answer', r['voting'])}"), _print_hits(r["neighbours"])))


@app.command()
def sql(ctx: typer.Context, query: str, as_json: bool = JSON) -> None:
    """DuckDB SQL over every table of the store, read in place, e.g. ravlm sql "select answer, count(*) from qa
    group by 1" or "show tables". Vector tables have `__` in their names: quote them."""
    from flows.common import settings_from
    from ravlm_core.query.analytics import json_records, run_sql

    frame = run_sql(settings_from(ctx.obj).store_uri, query)
    _emit(json_records(frame), as_json, lambda _: typer.echo(frame.to_string(max_rows=50, max_colwidth=60)))


@app.command()
def tables(ctx: typer.Context, name: Optional[str] = typer.Argument(None, help="One table: show its schema."),
           as_json: bool = JSON) -> None:
    """The store's tables: rows, version and indexes of each, or one table's schema."""
    from flows.common import settings_from
    from ravlm_core.query.analytics import describe_tables
    from ravlm_core.store import Store

    found = describe_tables(Store(settings_from(ctx.obj).store_uri), name)
    _emit(found, as_json, _print_tables)


def _print_tables(found: dict) -> None:
    _table("tables", ["table", "rows", "version", "indexes"],
           [[n, t["rows"], t["version"], ", ".join(t["indexes"])] for n, t in found.items()])
    for name, table in found.items():
        if "schema" in table:
            _table(name, ["column", "type"], [[c, kind] for c, kind in table["schema"].items()])


@app.command()
def status(ctx: typer.Context, as_json: bool = JSON) -> None:
    """The store at a glance: tables (rows, versions, indexes), the pinned encoder, images without vectors, stale
    predictions and the last runs of each flow. Reads the store only: no Prefect server, no model."""
    from flows.common import settings_from
    from ravlm_core.query.status import store_status
    from ravlm_core.store import Store

    settings = settings_from(ctx.obj)
    _emit(store_status(Store(settings.store_uri), settings.models_dir), as_json, _print_status)


def _print_status(result: dict) -> None:
    typer.echo(f"store {result['store']}")
    encoder = result["encoder"]
    typer.echo(f"encoder {encoder['model_tag'] if encoder else 'none pinned yet (run ravlm embed)'}")
    _table("tables", ["table", "rows", "version", "indexes"],
           [[n, t["rows"], t["version"], ", ".join(t["indexes"])] for n, t in result["tables"].items()])
    indexes = result.get("vector_indexes") or {}
    if indexes:
        _table("vector indexes", ["table", "index", "indexed", "unindexed", "recall@10", "nprobes", "refine",
                                  "p50 ms", "measured (UTC)"],
               [[n, i["index_type"], i["rows_indexed"], i["rows_unindexed"],
                 "not measured" if i["recall_at_10"] is None else f"{i['recall_at_10']:.3f}", i["nprobes"],
                 i["refine_factor"], i["p50_ms"], i["measured_at"]] for n, i in indexes.items()])
    missing = result["images_without_vectors"]
    if missing is not None:
        typer.echo(f"images without vectors: {missing['count']}" + (" (run ravlm embed)" if missing["count"] else ""))
    for table, counts in result["stale_predictions"].items():
        typer.echo(f"{table}: {counts['rows']} rows, {counts['stale']} from an older KB or encoder")
    rows = [[flow, r["name"], r["state"], r["finished_at"][:19], r["seconds"], r["message"][:80]]
            for flow, runs in result["last_runs"].items() for r in runs]
    if rows:
        _table("last runs", ["flow", "run", "state", "finished (UTC)", "seconds", "message"], rows)


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
    _table("neighbours", ["score", "path", "dataset", "split", "caption"],
           [[h.get("score"), h.get("path") or h.get("image_id", ""), h.get("dataset"), h.get("split"), h.get("caption")]
            for h in hits])


# Per kind of result: (table title, [(header, row key)]); hybrid searches add their two legs' scores.
_COLUMNS = {
    "images": ("images", [("score", "score"), ("path", "path"), ("dataset", "dataset"), ("split", "split"),
                          ("caption", "caption")]),
    "texts": ("texts", [("score", "score"), ("text", "text"), ("kind", "kind"), ("listings", "listings"),
                        ("e.g. path", "path"), ("dataset", "dataset"), ("split", "split")]),
    "duplicates": ("near-duplicates", [("group", "group"), ("size", "size"), ("similarity", "similarity"),
                                       ("path", "path"), ("dataset", "dataset"), ("split", "split"),
                                       ("caption", "caption"), ("listings", "listings")]),
}


def _print_results(hits) -> None:
    title, columns = _COLUMNS[hits.kind]
    if any("text_score" in h for h in hits):
        columns = columns[:1] + [("vector", "vector_score"), ("full text", "text_score")] + columns[1:]

    def cell(hit: dict, key: str):
        value = hit.get(key) or (hit.get("image_id") if key == "path" else None)  # no listing left: its id
        return "" if value is None else value

    _table(title, [header for header, _ in columns], [[cell(h, key) for _, key in columns] for h in hits])


def _print_ingest(result: dict) -> None:
    verb = "would be" if result["dry_run"] else "were"
    typer.echo(f"{result['dataset']}: {result['images_seen']} images listed; {result['added']} added, "
               f"{result['changed']} changed, {result['reannotated']} re-annotated, {result['removed']} removed, "
               f"{result['unchanged']} unchanged; {result['new_images']} new image files {verb} stored")
    if result["bad_rows"]:
        _table(f"{len(result['bad_rows'])} rows rejected (fix and rerun: nothing already written is lost)",
               ["where", "why"], [[b["ref"], b["reason"]] for b in result["bad_rows"]])


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
    """Run the CLI; a user error anywhere (even inside a flow run) ends as one line on stderr and exit code 2, a
    failed unit of work (a shard, a query part) as one line naming it and exit code 1."""
    import sys

    debug = "--debug" in sys.argv
    try:
        code = app(standalone_mode=False)  # a raised typer.Exit comes back as its exit code
    except typer.Abort:
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 - the one place errors meet the user
        if hasattr(error, "show") and hasattr(error, "exit_code"):  # a usage error (typer's own click): one box
            error.show()
            sys.exit(error.exit_code)
        found = _one_line(error)
        if found is None or debug:
            raise
        typer.echo(f"error: {found[0]}", err=True)
        sys.exit(found[1])
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
