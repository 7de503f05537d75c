"""`--where` filters on the images listing: a column from a fixed list, an operator, and a value that is parsed
by the column's type and written back as a quoted (or numeric) literal, so a filter value can never run as SQL."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping, Sequence

import pyarrow as pa

from ravlm_core.errors import UserError
from ravlm_core.retrieval.search import kb_filter, vector_sets_filter
from ravlm_core.schemas import ACTIVE, IMAGES, IMAGES_SCHEMA
from ravlm_core.store import Store, sql_quote

# The listing columns a filter may name (`removed_at` is not one: removed rows are never searched).
FILTER_COLUMNS = ("dataset", "split", "path", "uri", "caption", "format", "width", "height", "extra", "image_id",
                  "member_id", "ingested_at")
# `~` is "contains, ignoring case"; `in` takes a comma-separated list. Longest first, so `>=` is not read as `>`.
OPERATORS = (">=", "<=", "!=", "=", ">", "<", "~")
_SYNTAX = re.compile(rf"^\s*([A-Za-z_]\w*)\s*(?:({'|'.join(map(re.escape, OPERATORS))})|\s(in)\s)(.*)$",
                     re.IGNORECASE | re.DOTALL)
HELP = ("COLUMN=VALUE, COLUMN!=VALUE, COLUMN>VALUE (>=, <, <=), COLUMN~TEXT (contains, any case) or "
        f"'COLUMN in A,B'; columns: {', '.join(FILTER_COLUMNS)}")


@dataclass(frozen=True)
class Filter:
    """One parsed filter: `values` are Python values of the column's type (one, or several for `in`)."""

    column: str
    op: str
    values: tuple
    given: str

    def sql(self) -> str:
        """The filter as a LanceDB `where` clause; every value is a literal made here, never the text given."""
        literals = [_literal(self.column, value) for value in self.values]
        if self.op == "in":
            return f"{self.column} IN ({', '.join(literals)})"
        if self.op == "~":
            return f"contains(lower({self.column}), {literals[0]})"
        return f"{self.column} {'<>' if self.op == '!=' else self.op} {literals[0]}"


def parse_filter(given: str) -> Filter:
    """Parse `COLUMN OP VALUE` (see HELP); a mistake raises a one-line UserError naming the filter."""
    found = _SYNTAX.match(given)
    if not found:
        raise UserError(f"--where {given!r}: not a filter; write {HELP}")
    column, symbol, word, rest = found.groups()
    if column not in FILTER_COLUMNS:
        raise UserError(f"--where {given!r}: unknown column {column!r} (columns: {', '.join(FILTER_COLUMNS)})")
    op = "in" if word else symbol
    kind = IMAGES_SCHEMA.field(column).type
    texts = [_unquote(part) for part in rest.split(",")] if op == "in" else [_unquote(rest)]
    if op == "~":
        if not pa.types.is_string(kind):
            raise UserError(f"--where {given!r}: ~ (contains) applies to text columns, and {column} is {kind}")
        texts = [texts[0].lower()]
    return Filter(column, op, tuple(_typed(given, column, kind, text) for text in texts), given)


def parse_filters(where: Sequence[str] | Mapping[str, object] | None) -> list[Filter]:
    """Filters from the CLI's repeated `--where` strings, or from a mapping {column: value or list of values}
    (equality, or `in` for a list) as the Python API takes them."""
    if not where:
        return []
    if isinstance(where, str):
        where = [where]
    if isinstance(where, Mapping):
        where = [f"{column} in {','.join(map(str, value))}" if isinstance(value, (list, tuple, set))
                 else f"{column}={value}" for column, value in where.items()]
    return [parse_filter(given) for given in where]


def listing_where(filters: Sequence[Filter] = (), dataset: str | None = None, split: str | None = None) -> str:
    """The `where` clause over `images` for the listed rows in `dataset` / `split` that pass every filter."""
    parts = [ACTIVE]
    parts += [f"dataset = {sql_quote(dataset)}"] if dataset else []
    parts += [f"split = {sql_quote(split)}"] if split else []
    parts += [f"({f.sql()})" for f in filters]
    return " AND ".join(parts)


def _unquote(text: str) -> str:
    """The value without surrounding whitespace and one pair of matching quotes (`caption='a red star'`)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _typed(given: str, column: str, kind: pa.DataType, text: str):
    if pa.types.is_integer(kind):
        try:
            return int(text)
        except ValueError:
            raise UserError(f"--where {given!r}: {column} holds whole numbers, not {text!r}") from None
    if pa.types.is_timestamp(kind):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise UserError(f"--where {given!r}: {column} holds times; write one as 2026-11-24 or "
                            f"2026-11-24T05:30:00+00:00, not {text!r}") from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    return text


def _literal(column: str, value) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):  # stored in UTC; a timestamp literal without a zone compares as UTC
        return f"TIMESTAMP '{value.strftime('%Y-%m-%d %H:%M:%S.%f')}'"
    return sql_quote(value)


def listed_in(store: Store, dataset: str | None, split: str | None) -> str | None:
    """The vector-table filter for images listed in `dataset` (all its splits, or `split`), or in `split` of
    any dataset; None for no filter, "false" when nothing is listed there."""
    if not dataset and not split:
        return None
    where = kb_filter(dataset, split) if dataset else f"split = {sql_quote(split)} AND {ACTIVE}"
    rows = store.read(IMAGES, columns=["dataset", "split"], where=where)
    sets = sorted(set(zip(rows.column("dataset").to_pylist(), rows.column("split").to_pylist()))) if rows.num_rows else []
    return vector_sets_filter(sets) if sets else "false"
