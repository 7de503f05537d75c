"""The commands an analyst runs against the store: search, dedup, ask, sql, tables and status.

They run in this process with no flow and no Prefect server, and they start fast: the library (and torch, when a
model is needed) is imported inside each command, never at import time (benchmarks/search_bench.py measures it)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flows.cli import render
from flows.cli.options import (
    FilterDataset,
    FilterSplit,
    Json,
    Output,
    OutputAs,
    OutputFormat,
    Target,
    Where,
    deprecated,
    pick,
)

# `--format` meant the output format here and the source format in `ingest`: each now has its own name.
OldFormat = Annotated[Optional[OutputFormat], deprecated("--format", "--output-format")]


def _session(ctx: typer.Context):
    from flows.common import settings_from
    from ravlm_core.query.session import Session

    return Session(settings_from(ctx.obj))


def search(ctx: typer.Context,
           text: Annotated[Optional[str], typer.Argument(help="Text query.", show_default=False)] = None,
           image: Annotated[Optional[Path], typer.Option(help="Image query (a file).")] = None,
           top_k: Annotated[int, typer.Option("-k", "--top-k", help="How many hits to return.")] = 10,
           dataset: FilterDataset = None, split: FilterSplit = None, where: Where = None,
           target: Annotated[Target, typer.Option(
               help="images, or texts: the captions and questions the encoder embedded (with --image: image→text), "
               "each with where it is used.")] = Target.images,
           hybrid: Annotated[bool, typer.Option(
               "--hybrid", help="Text queries: fuse the vector hits with full-text hits on the query's words "
               "(captions, or the texts), reranked.")] = False,
           reranker: Annotated[str, typer.Option(help="With --hybrid: rrf (reciprocal rank fusion) or "
                                                 "cross-encoder:FOLDER (a local sentence-transformers "
                                                 "cross-encoder).")] = "rrf",
           output_format: OutputAs = OutputFormat.table, output: Output = None, as_json: Json = False,
           old_format: OldFormat = None) -> None:
    """Text→image, image→image or image→text search over the embedded store, optionally hybrid with full text.
    Runs here: no flow, no server, no training."""
    if (text is None) == (image is None):
        raise typer.BadParameter("give a text query or --image PATH (exactly one)")
    output_format = pick(output_format, old_format, OutputFormat.table)
    _check_output(output_format, output)
    session = _session(ctx)
    hits = session.search(text=text, image=image, k=top_k, dataset=dataset, split=split, where=where,
                          target=target.value, hybrid=hybrid, reranker=reranker)
    query_thumbnail = None
    if image is not None and output_format is OutputFormat.html:
        from ravlm_core.imaging import thumbnail_jpeg
        from ravlm_core.query.session import open_image

        query_thumbnail = thumbnail_jpeg(open_image(image))
    _write_results(hits, output_format, output, as_json, session.store, query_thumbnail)


def dedup(ctx: typer.Context,
          threshold: Annotated[float, typer.Option(
              help="Cosine similarity in (0, 1] at or above which two images are near-duplicates (0.95 is a start; "
              "what is near depends on the encoder).", show_default=False)],
          dataset: FilterDataset = None, split: FilterSplit = None,
          output_format: OutputAs = OutputFormat.table, output: Output = None, as_json: Json = False,
          old_format: OldFormat = None) -> None:
    """Groups of near-duplicate images (re-encoded, resized, brightened copies) over the pinned encoder's image
    vectors: one row per member with its group, its best similarity within the group and a listing. Byte-identical
    files are one image already. Runs here: no flow, no server."""
    output_format = pick(output_format, old_format, OutputFormat.table)
    _check_output(output_format, output)
    session = _session(ctx)
    _write_results(session.dedup(threshold=threshold, dataset=dataset, split=split), output_format, output,
                   as_json, session.store)


def _check_output(output_format: OutputFormat, output: Optional[Path]) -> None:
    from ravlm_core.errors import UserError

    if output_format in (OutputFormat.parquet, OutputFormat.html) and output is None:
        raise UserError(f"--output-format {output_format.value} writes a file: give --output PATH")


def _write_results(hits, output_format: OutputFormat, output: Optional[Path], as_json: bool, store,
                   query_thumbnail: bytes | None = None) -> None:
    """Print the hits (a table, or JSON rows), or write them to --output and say where."""
    if output_format in (OutputFormat.parquet, OutputFormat.html):
        try:
            if output_format is OutputFormat.parquet:
                written = hits.write_parquet(output)
            else:
                written = hits.write_html(output, store, query_thumbnail)
        except OSError as error:  # a missing folder, no permission, a full disk: the user's to fix
            from ravlm_core.errors import UserError, first_line

            raise UserError(f"cannot write --output {output}: {error.strerror or first_line(error)}") from None
        render.emit({"output": str(written), "format": output_format.value, "rows": len(hits)}, as_json,
                    render.written)
        return
    render.emit(list(hits), as_json or output_format is OutputFormat.json, lambda _: render.hits(hits))


def ask(ctx: typer.Context,
        image: Annotated[Path, typer.Argument(help="The image (a file).", show_default=False)],
        question: Annotated[str, typer.Argument(help="The question, in quotes.", show_default=False)],
        kb: Annotated[Optional[list[str]], typer.Option(
            "--kb", help="Knowledge base: DATASET[:SPLIT], repeatable (default: easy-vqa:train).")] = None,
        as_json: Json = False) -> None:
    """Answer a question about an image with the answerer `ravlm vqa` trained for the knowledge base."""
    result = _session(ctx).ask(image=image, question=question, kb=kb or None)
    render.emit(result, as_json, render.answer)


def sql(ctx: typer.Context,
        query: Annotated[str, typer.Argument(help="A DuckDB query, in quotes.", show_default=False)],
        as_json: Json = False) -> None:
    """DuckDB SQL over every table of the store, read in place, e.g. ravlm sql "select answer, count(*) from qa
    group by 1" or "show tables". Vector tables have `__` in their names: quote them."""
    from flows.common import settings_from
    from ravlm_core.query.analytics import json_records, run_sql

    frame = run_sql(settings_from(ctx.obj).store_uri, query)
    render.emit(json_records(frame), as_json, lambda _: typer.echo(frame.to_string(max_rows=50, max_colwidth=60)))


def tables(ctx: typer.Context,
           name: Annotated[Optional[str], typer.Argument(help="One table: show its schema.",
                                                         show_default=False)] = None,
           as_json: Json = False) -> None:
    """The store's tables: rows, version and indexes of each, or one table's schema."""
    from flows.common import settings_from
    from ravlm_core.query.analytics import describe_tables
    from ravlm_core.store import Store

    render.emit(describe_tables(Store(settings_from(ctx.obj).store_uri), name), as_json, render.tables)


def status(ctx: typer.Context, as_json: Json = False) -> None:
    """The store at a glance: tables (rows, versions, indexes), the pinned encoder, images without vectors, stale
    predictions and the last runs of each flow. Reads the store only: no Prefect server, no model."""
    from flows.common import settings_from
    from ravlm_core.query.status import store_status
    from ravlm_core.store import Store

    settings = settings_from(ctx.obj)
    render.emit(store_status(Store(settings.store_uri), settings.models_dir), as_json, render.status)
