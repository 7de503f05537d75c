"""What a search or a near-duplicate scan hands back: rows that print as JSON as they are, and that convert to
Arrow, pandas, Parquet or a self-contained HTML grid of thumbnails."""
from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from ravlm_core.contents import stored_values
from ravlm_core.evaluate.report import img_tag
from ravlm_core.store import Store

if TYPE_CHECKING:
    import pandas as pd

_SCORES = [("score", pa.float64()), ("vector_score", pa.float64()), ("text_score", pa.float64())]
_LISTING = [("dataset", pa.string()), ("split", pa.string()), ("path", pa.string())]
# Columns of each kind of result, in output order; a row lacking one (no full-text score) holds null there.
SCHEMAS = {
    "images": pa.schema([("rank", pa.int32()), *_SCORES, ("image_id", pa.string()), *_LISTING,
                         ("caption", pa.string()), ("uri", pa.string()), ("width", pa.int32()),
                         ("height", pa.int32())]),
    "texts": pa.schema([("rank", pa.int32()), *_SCORES, ("text_id", pa.string()), ("text", pa.string()),
                        ("kind", pa.string()), ("listings", pa.int64()), ("image_id", pa.string()), *_LISTING]),
    "duplicates": pa.schema([("group", pa.int32()), ("size", pa.int32()), ("similarity", pa.float64()),
                             ("image_id", pa.string()), *_LISTING, ("caption", pa.string()),
                             ("listings", pa.int64())]),
}


class Hits(list):
    """Result rows, best first: a list of dicts (what `--json` prints) of one `kind` (a key of SCHEMAS)."""

    def __init__(self, rows=(), kind: str = "images", title: str = "search"):
        super().__init__(rows)
        self.kind, self.title = kind, title

    def to_arrow(self) -> pa.Table:
        schema = SCHEMAS[self.kind]
        rows = [{**row, "rank": n} for n, row in enumerate(self, 1)] if "rank" in schema.names else list(self)
        return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def write_parquet(self, path: str | Path) -> Path:
        pq.write_table(self.to_arrow(), path)
        return Path(path)

    def write_html(self, path: str | Path, store: Store, query_thumbnail: bytes | None = None) -> Path:
        """One self-contained page: each hit's stored thumbnail inlined, with its text escaped."""

        thumbs = stored_values(store, [row["image_id"] for row in self if row.get("image_id")], "thumbnail")
        if self.kind == "duplicates":
            groups: dict[int, list[dict]] = {}
            for row in self:
                groups.setdefault(row["group"], []).append(row)
            body = "".join(f"<h2>group {n}: {len(rows)} images, similarity up to {rows[0]['similarity']:.4f}</h2>"
                           f'<div class="grid">{"".join(_figure(row, thumbs, img_tag) for row in rows)}</div>'
                           for n, rows in groups.items())
        else:
            query = f'<figure class="query">{img_tag(query_thumbnail, "query")}<figcaption>query</figcaption></figure>' \
                if query_thumbnail else ""
            body = f'<div class="grid">{query}{"".join(_figure(row, thumbs, img_tag) for row in self)}</div>'
        title = html.escape(self.title)
        page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
                f"<style>{_STYLE}</style></head><body><h1>{title}</h1>{body}</body></html>\n")
        Path(path).write_text(page, encoding="utf-8")
        return Path(path)


def _figure(row: dict, thumbs: dict[str, bytes], img) -> str:
    """A grid cell: the thumbnail (when the image has one) over score, text and where it is listed."""
    score = row.get("score", row.get("similarity"))
    lines = [f"{score:.4f}" if isinstance(score, float) else "", row.get("caption") or row.get("text") or "",
             "/".join(str(row[key]) for key in ("dataset", "split", "path") if row.get(key))]
    thumb = thumbs.get(row.get("image_id") or "")
    picture = img(thumb, lines[1]) if thumb else ""
    text = "".join(f"<div>{html.escape(line)}</div>" for line in lines if line)
    return f"<figure>{picture}<figcaption>{text}</figcaption></figure>"


_STYLE = """
body{font-family:sans-serif;margin:2em}.grid{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;width:160px;font-size:small;overflow-wrap:anywhere}img{max-width:160px;display:block}
.query{outline:2px solid #36c}
"""
