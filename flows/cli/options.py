"""The CLI's shared option types: the choices `--help` lists, the options several commands take, and old spellings
kept for one release."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


# The choices live here rather than imported from ravlm_core so that `--help` and the interactive commands start
# without importing the library; tests/test_cli.py checks they match the library's own lists.
class SourceFormat(str, Enum):
    """How `ingest` reads a source folder."""

    auto = "auto"
    manifest = "manifest"
    folder = "folder"
    coco = "coco"
    vqav2 = "vqav2"


class OutputFormat(str, Enum):
    """How `search` and `dedup` hand back their rows."""

    table = "table"
    json = "json"
    parquet = "parquet"
    html = "html"


class Target(str, Enum):
    """What `search` looks for."""

    images = "images"
    texts = "texts"


class Runner(str, Enum):
    """Where a flow's tasks run."""

    threads = "threads"
    dask = "dask"
    ray = "ray"


Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (logs stay on stderr).")]
Kb = Annotated[Optional[list[str]], typer.Option(
    "--kb", help="Knowledge base to retrieve from: DATASET[:SPLIT], repeatable (default: the query dataset's train "
    "split).")]
Split = Annotated[str, typer.Option(help="The query set's split.")]
# Optional to the parser only while the deprecated `--dataset` may give it instead; the command checks it is given.
QuerySet = Annotated[Optional[str], typer.Argument(metavar="DATASET", help="The query set's dataset (required).",
                                                   show_default=False)]
NoRetrieval = Annotated[bool, typer.Option("--no-retrieval", help="Run the same generator with an empty context.")]
GENERATOR_HELP = ("What generates: KIND[:MODEL][,key=value...] (max_new_tokens, num_beams, batch_size, context_items, "
                  "context_images, prompt, dtype) or a JSON file of those fields.")
SEARCH_WHERE = typer.Option(
    "--where", help="Filter on the images listing, repeatable (all must hold): COLUMN=VALUE, COLUMN!=VALUE, "
    "COLUMN>VALUE (>=, <, <=), COLUMN~TEXT (contains, any case) or 'COLUMN in A,B'. Columns: dataset, split, path, "
    "uri, caption, format, width, height, extra, image_id, member_id, ingested_at. Values are always literals.")
Where = Annotated[Optional[list[str]], SEARCH_WHERE]
FilterDataset = Annotated[Optional[str], typer.Option(help="Only images listed in this dataset.")]
FilterSplit = Annotated[Optional[str], typer.Option(help="Only images listed in this split (of --dataset, or of "
                                                         "any).")]
Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="The file --output-format parquet / html "
                                                                       "writes.")]
OutputAs = Annotated[OutputFormat, typer.Option("--output-format", help="How the rows come back: a table, JSON on "
                                                "stdout, or a Parquet / HTML file (those need --output).")]


def deprecated(old: str, new: str) -> typer.models.OptionInfo:
    """A hidden option that still takes the spelling `old` for one release and says on stderr to use `new`."""
    def warn(value):
        if value is not None:
            typer.echo(f"warning: {old} is deprecated, use {new}", err=True)
        return value

    return typer.Option(old, hidden=True, show_default=False, callback=warn)


def pick(new, old, default=None):
    """The value given with the current spelling, else with the deprecated one, else `default`."""
    if new is not None and new != default:
        return new
    return old if old is not None else new
