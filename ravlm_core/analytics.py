"""SQL for analysts over the store's LanceDB tables, through DuckDB."""
from __future__ import annotations

import re

import pandas as pd

from ravlm_core.store import Store


def run_sql(store_uri: str, query: str) -> pd.DataFrame:
    """Run DuckDB SQL where every store table named in `query` is available under its own name.

    Only the tables the query mentions are read (as Arrow), so a query on `qa` does not load the vectors.
    Vector tables have `__` in their names: quote them, e.g. select count(*) from "builtin-abc__image_vectors".
    """
    import duckdb

    store = Store(store_uri)
    connection = duckdb.connect()
    for name in store.db.list_tables().tables:
        if re.search(rf'(?<![\\w-]){re.escape(name)}(?![\\w-])', query):
            connection.register(name, store.table(name).to_arrow())
    return connection.execute(query).df()
