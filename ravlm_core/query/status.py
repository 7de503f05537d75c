"""The state of a store at a glance, read from the store alone (no Prefect server): tables, the pinned encoder,
images without vectors, stale predictions, and the last runs of each flow (the `runs` table flows write)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from ravlm_core.index import ann
from ravlm_core.locations import is_remote, join, read_text
from ravlm_core.query.analytics import describe_tables
from ravlm_core.schemas import ACTIVE, IMAGES, PREDICTION_TABLES, RUNS, RUNS_SCHEMA, image_vectors_table
from ravlm_core.store import Store


def record_run(store: Store, run_id: str, flow: str, name: str, state: str, message: str,
               started_at: datetime | None) -> None:
    """One row per flow run, written when it ends (a rerun of the same run id overwrites its row)."""
    finished = datetime.now(timezone.utc)
    seconds = (finished - started_at).total_seconds() if started_at else None
    row = {"run_id": [run_id], "flow": [flow], "name": [name], "state": [state], "message": [message[:500]],
           "started_at": [started_at], "finished_at": [finished], "seconds": [seconds]}
    store.upsert(RUNS, pa.Table.from_pydict(row, schema=RUNS_SCHEMA), "run_id")


def store_status(store: Store, models_dir: Path, runs_per_flow: int = 3) -> dict:
    """Tables (rows, version, indexes), the pinned encoder, images without vectors, stale predictions, last runs."""
    tables = describe_tables(store)
    encoder = _pinned_encoder(models_dir)
    return {
        "store": store.uri,
        "tables": tables,
        "encoder": encoder,
        "images_without_vectors": _images_without_vectors(store, encoder["model_tag"]) if encoder else None,
        "vector_indexes": vector_indexes(store),
        "stale_predictions": _stale_predictions(store),
        "last_runs": last_runs(store, runs_per_flow),
    }


def vector_indexes(store: Store) -> dict[str, dict]:
    """Per vector table with an ANN index: its type, rows indexed / not yet indexed, and the quality gate's last
    figure (recall@10 against exact search, the nprobes / refine chosen, when measured)."""
    quality = ann.read_quality(store)
    out = {}
    for name in sorted(store.db.list_tables().tables):
        if name == ann.INDEX_QUALITY:
            continue
        table = store.table(name)
        index = ann.vector_index(table)
        if index is None:
            continue
        stats = table.index_stats(index.name)
        record = quality.get(name)
        out[name] = {"index_type": stats.index_type, "rows_indexed": stats.num_indexed_rows,
                     "rows_unindexed": stats.num_unindexed_rows, "segments": stats.num_indices,
                     "recall_at_10": record.recall_at_10 if record else None,
                     "target_recall": record.target_recall if record else None,
                     "nprobes": record.nprobes if record else None,
                     "refine_factor": record.refine_factor if record else None,
                     "p50_ms": round(record.p50_ms, 2) if record else None,
                     "measured_at": str(record.measured_at)[:19] if record else None}
    return out


def _pinned_encoder(models_dir: str | Path) -> dict | None:
    """The pinned built-in encoder's folder, tag and training recall (text→image and image→text on its training
    images and on the held-out ones; None for encoders trained before they were measured), read from its files where
    they live (a bucket included) without downloading the model: status stays cheap. A pin to a folder that is gone
    still shows its name."""
    pin = read_text(join(models_dir, "builtin.json"))
    if pin is None:
        return None
    pinned = json.loads(pin)["model_dir"]
    folder = join(models_dir, pinned) if is_remote(models_dir) else Path(pinned)  # a bucket's pin is relative
    spec = read_text(join(folder, "encoder.json"))
    fields = json.loads(spec) if spec else {}
    training = fields.get("training") or {}
    return {"model_dir": str(folder), "model_tag": fields.get("tag") or Path(pinned).name,
            "best_epoch": training.get("best_epoch"), "heldout_images": training.get("heldout_images"),
            "train_recall": training.get("train_recall"), "heldout_recall": training.get("heldout_recall")}


def _images_without_vectors(store: Store, model_tag: str) -> dict:
    """Listed images whose content the pinned encoder's vector table lacks: what the next embed will do."""
    if not store.has(IMAGES):
        return {"count": 0, "examples": []}
    listed = sorted(set(store.read(IMAGES, columns=["image_id"], where=ACTIVE).column("image_id").to_pylist()))
    have = store.existing_ids(image_vectors_table(model_tag), "image_id", listed)
    missing = [i for i in listed if i not in have]
    return {"count": len(missing), "examples": missing[:5]}


def _stale_predictions(store: Store) -> dict:
    """Prediction rows made with an older KB version or encoder than the newest job of the same kind (same query
    set, KB, generator and variant): history the next jobs supersede."""
    out = {}
    for table in PREDICTION_TABLES:
        if not store.has(table):
            continue
        names = store.table(table).schema.names
        columns = [c for c in ("dataset", "split", "kb", "variant", "generator", "kb_version", "model_tag",
                               "created_at") if c in names]
        frame = store.read(table, columns=columns).to_pandas()
        if frame.empty:
            out[table] = {"rows": 0, "stale": 0}
            continue
        kind = [c for c in ("dataset", "split", "kb", "variant", "generator") if c in frame]
        version = [c for c in ("kb_version", "model_tag") if c in frame]
        frame[version] = frame[version].fillna("")
        frame = frame.sort_values("created_at", kind="stable")
        newest = frame.groupby(kind, dropna=False)[version].transform("last")
        stale = (frame[version] != newest).any(axis=1)
        out[table] = {"rows": int(len(frame)), "stale": int(stale.sum())}
    return out


def last_runs(store: Store, per_flow: int = 3) -> dict[str, list[dict]]:
    """The newest runs of each flow: name, state, when, how long, and the one-line message."""
    if not store.has(RUNS):
        return {}
    rows = store.read(RUNS).to_pylist()
    rows.sort(key=lambda r: r["finished_at"] or datetime.min.replace(tzinfo=timezone.utc), reverse=True)
    out: dict[str, list[dict]] = {}
    for row in rows:
        runs = out.setdefault(row["flow"], [])
        if len(runs) < per_flow:
            runs.append({"name": row["name"], "state": row["state"], "finished_at": str(row["finished_at"]),
                         "seconds": round(row["seconds"], 1) if row["seconds"] is not None else None,
                         "message": row["message"]})
    return out
