"""`ravlm`: every pipeline command runs a flow, every interactive one reads the store here; `--json` prints one JSON
document on stdout for machines.

Exit codes: 0 done; 1 a failure (one line naming the shard or part, or a traceback when nothing names it); 2 a
user error, the command line's included (one line); 3 done, but rows rejected (`ingest`)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError  # typer vendors click

from flows.cli import interactive, pipeline
from flows.cli.options import SEARCH_WHERE, Runner  # noqa: F401 - SEARCH_WHERE: tests read its help

UNIT_FAILED, USER_ERROR = 1, 2

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Retrieval-augmented vision-language batch jobs: ingest, embed, VQA, caption, eval, search.")

PIPELINE = "Pipeline: runs a Prefect flow"
INTERACTIVE = "Interactive: reads the store here, no server"
for command, name in ((pipeline.demo, "demo"), (pipeline.serve, "serve"), (pipeline.nightly, "nightly"),
                      (pipeline.ingest, "ingest"), (pipeline.embed, "embed"), (pipeline.vqa, "vqa"),
                      (pipeline.caption, "caption"), (pipeline.evaluate, "eval")):
    app.command(name=name, rich_help_panel=PIPELINE)(command)
for command in (interactive.search, interactive.dedup, interactive.ask, interactive.sql, interactive.tables,
                interactive.status):
    app.command(rich_help_panel=INTERACTIVE)(command)


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Annotated[Optional[str], typer.Option(
        help="Where Parquet shards, models and the default store live: a folder or a URI on object storage "
        "(s3://bucket/ravlm).")] = None,
    lancedb_uri: Annotated[Optional[str], typer.Option(help="Any LanceDB URI (folder, s3://, gs://, db://).")] = None,
    reports_dir: Annotated[Optional[Path], typer.Option(
        help="Where eval reports are written (default ./reports).")] = None,
    encoder: Annotated[Optional[str], typer.Option(help='"builtin", a local model folder, or a hub id.')] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = None,
    k: Annotated[Optional[int], typer.Option(help="Neighbours retrieved per item.")] = None,
    kb_split: Annotated[Optional[str], typer.Option(help="The split retrieval searches (default: train).")] = None,
    runner: Annotated[Optional[Runner], typer.Option(help="Where tasks run (default: threads).")] = None,
    runner_address: Annotated[Optional[str], typer.Option(help="Address of an existing Dask / Ray cluster.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of user errors too.")] = False,
) -> None:
    """Settings every command shares; unset ones come from RAVLM_* variables and ravlm.toml."""
    ctx.meta["debug"] = debug
    given = {"data_dir": data_dir, "lancedb_uri": lancedb_uri, "reports_dir": reports_dir, "encoder": encoder,
             "device": device, "k": k, "kb_split": kb_split, "runner": runner, "runner_address": runner_address}
    # Overrides travel to flows as parameters, so they must be plain JSON values.
    ctx.obj = {key: value.value if isinstance(value, Runner) else str(value) if isinstance(value, Path) else value
               for key, value in given.items() if value is not None}


def _usage_line(error: UsageError) -> str:
    """Click's message on one line, pointing at the command's help instead of printing it."""
    where = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
    return " ".join(error.format_message().split()) + where


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


def main() -> None:
    """Run the CLI; a user error anywhere (the command line, or inside a flow run) ends as one line on stderr and
    exit code 2, a failed unit of work (a shard, a query part) as one line naming it and exit code 1."""
    debug = "--debug" in sys.argv
    try:
        code = app(standalone_mode=False)  # a raised typer.Exit comes back as its exit code
    except typer.Abort:
        sys.exit(1)
    except UsageError as error:
        if isinstance(error, NoArgsIsHelpError):  # a bare `ravlm`: the help
            error.show()
        else:
            typer.echo(f"error: {_usage_line(error)}", err=True)
        sys.exit(error.exit_code)
    except Exception as error:  # noqa: BLE001 - the one place errors meet the user
        found = _one_line(error)
        if found is None and isinstance(error, ClickException):
            error.show()
            sys.exit(error.exit_code)
        if found is None or debug:
            raise
        typer.echo(f"error: {found[0]}", err=True)
        sys.exit(found[1])
    sys.exit(code if isinstance(code, int) else 0)
