"""For analysts: SQL over the store's LanceDB tables through DuckDB, and what the tables are."""
from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

from ravlm_core.errors import UserError, first_line
from ravlm_core.store import Store

if TYPE_CHECKING:
    import pandas as pd


def run_sql(store_uri: str, query: str) -> pd.DataFrame:
    """Run DuckDB SQL where every table of the store is a view under its own name (`show tables`,
    `information_schema` and joins work).

    Tables are scanned in place as Lance datasets: DuckDB reads only the columns and rows the query needs, so a
    query on `qa` never loads the vectors and nothing is copied first. Vector tables have `__` in their names:
    quote them, e.g. select count(*) from "builtin-abc__image_vectors".

    Raises:
        UserError: the query does not parse or names a table or column that does not exist (one line).
    """
    import duckdb

    store = Store(store_uri)
    connection = duckdb.connect()
    for name in store.db.list_tables().tables:
        connection.register(name, store.table(name).to_lance())
    try:
        return connection.execute(query).df()
    except duckdb.Error as error:
        raise UserError(f"sql: {first_line(error) or type(error).__name__}") from None


def json_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-able dicts: bytes become base64 text (never `{}`), vectors lists, times ISO 8601 strings."""
    def cell(value):
        if isinstance(value, (bytes, bytearray, memoryview)):
            return base64.b64encode(bytes(value)).decode("ascii")
        if hasattr(value, "tolist"):  # numpy arrays and scalars
            return cell(value.tolist())
        if isinstance(value, (list, tuple)):
            return [cell(v) for v in value]
        if isinstance(value, dict):
            return {k: cell(v) for k, v in value.items()}
        if isinstance(value, float) and value != value:
            return None
        if hasattr(value, "isoformat"):
            return value.isoformat()
        return value

    records = [{column: cell(value) for column, value in row.items()} for row in frame.to_dict(orient="records")]
    json.dumps(records)  # fail here, not half-way through printing, if something still is not JSON
    return records


def describe_tables(store: Store, name: str | None = None) -> dict[str, dict]:
    """Rows, version and indexes of every table (or of `name`, with its schema)."""
    names = sorted(store.db.list_tables().tables)
    if name is not None:
        if name not in names:
            raise UserError(f"no table {name!r} in {store.uri}; tables: {', '.join(names) or 'none yet'}")
        names = [name]
    found = {}
    for table_name in names:
        table = store.table(table_name)
        found[table_name] = {"rows": table.count_rows(), "version": table.version,
                             "indexes": sorted(i.name for i in table.list_indices())}
        if name is not None:
            found[table_name]["schema"] = {field.name: str(field.type) for field in table.schema}
    return found
