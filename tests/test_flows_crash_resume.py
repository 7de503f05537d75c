"""Kill -9 in the middle of every stage, then run the stage again: the store ends exactly as a clean run leaves it.

Each stage runs twice over the same small dataset: once cleanly, counting the table versions it commits, and once
in a second store where it gets SIGKILL from outside as soon as half of those commits have landed (the process
is mid-stage: a shard written but not listed, some batches of vectors or predictions committed, a model half
trained), then runs again to completion. Every table of the two stores must then hold the same rows, apart from
timestamps and run ids. The generative jobs include a trained SmallCap head and random tiny BLIP and chat-VLM
checkpoints, so their batch-by-batch commits are what is interrupted.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ravlm_core.store import Store
from tests.helpers.cli import ROOT, Ravlm
from tests.helpers.shapes import make_shapes_dataset

pytestmark = pytest.mark.server

# Shards of 6 images and small batches: every stage commits several times, so there is a middle to kill in.
# One batch per shard, fixed: a resumed run redoes whole shards, so its vectors are bit-identical to the clean run's.
SETTINGS = {"RAVLM_SHARD_SIZE": "6", "RAVLM_BATCH_SIZE": "6", "RAVLM_IMAGE_BATCH_SIZE": "6"}
# Run-specific columns, and tables that record runs rather than results.
VOLATILE_COLUMNS = {"run_id", "report"}
RUN_TABLES = {"runs", "eval_runs"}


def stages(folder: Path, models: Path) -> list[tuple[str, list[str]]]:
    from tests.helpers.random_models import make_blip, make_vlm

    blip, vlm = make_blip(models / "blip-vqa", "vqa"), make_vlm(models / "vlm")
    return [
        ("ingest", ["ingest", str(folder), "--dataset", "shapes"]),
        ("embed", ["embed"]),  # trains the built-in heads, embeds shard by shard, indexes
        ("vqa blip", ["vqa", "shapes", "--generator", f"blip:{blip},batch_size=6,max_new_tokens=3"]),
        ("caption vlm", ["caption", "shapes", "--generator", f"vlm:{vlm},batch_size=2,max_new_tokens=4"]),
        # The default generators with and without retrieval: trains the fusion answerer and SmallCap, then the report.
        ("eval", ["eval", "shapes"]),
    ]


def commits(uri: Path) -> int:
    """Table versions committed so far, counted from the manifests on disk (no LanceDB call, cheap to poll)."""
    if not uri.is_dir():
        return 0
    return sum(len(os.listdir(table / "_versions")) for table in uri.glob("*.lance") if (table / "_versions").is_dir())


def kill_after(command: list[str], env: dict, uri: Path, n_commits: int, log: Path) -> int:
    """Start `command`, SIGKILL it once `n_commits` new table versions have landed; returns commits at the kill."""
    start = commits(uri)
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        while process.poll() is None and commits(uri) - start < n_commits:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (
        f"{command[3:]} finished before its kill point ({n_commits} commits):\n{log.read_text()[-3000:]}")
    return commits(uri) - start


def canonical(table: pa.Table, root: Path) -> tuple[list[str], dict[str, list]]:
    """The rows without timestamps and run ids, paths relative to the store's `root`, sorted by their text
    columns; float columns kept apart."""
    keep = [f.name for f in table.schema
            if f.name not in VOLATILE_COLUMNS and not pa.types.is_timestamp(f.type)]
    rows = table.select(keep).to_pylist()
    floats = {f.name for f in table.schema if f.name in keep and _is_float(f.type)}
    keyed = sorted(rows, key=lambda r: repr([r[c] for c in keep if c not in floats]))
    return [repr({c: r[c] for c in keep if c not in floats}).replace(str(root), "<root>") for r in keyed], {
        c: [r[c] for r in keyed] for c in floats}


def _is_float(kind: pa.DataType) -> bool:
    while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    return pa.types.is_floating(kind)


def _close(a: list, b: list) -> bool:
    """Row by row (float lists may differ in length between rows): same nulls, same shapes, values within 1e-4."""
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            if x is not y:
                return False
            continue
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape or not np.allclose(x, y, atol=1e-4):
            return False
    return True


def assert_same_tables(clean_root: Path, resumed_root: Path) -> None:
    clean, resumed = Store(str(clean_root / "lancedb")), Store(str(resumed_root / "lancedb"))
    names = set(clean.db.list_tables().tables)
    assert set(resumed.db.list_tables().tables) == names
    for name in sorted(names - RUN_TABLES):
        (text_a, floats_a) = canonical(clean.read(name), clean_root)
        (text_b, floats_b) = canonical(resumed.read(name), resumed_root)
        assert len(text_a) == len(text_b), f"{name}: {len(text_a)} rows after a clean run, {len(text_b)} resumed"
        assert text_a == text_b, f"{name}: rows differ"
        for column in floats_a:
            assert _close(floats_a[column], floats_b[column]), f"{name}.{column} differs"


def test_kill_9_in_the_middle_of_every_stage_then_a_rerun_ends_as_a_clean_run(harness, tmp_path):
    folder = tmp_path / "shapes"
    make_shapes_dataset(folder, n_train=30, n_test=6, seed=3, fmt="jsonl")
    steps = stages(folder, tmp_path / "models")
    clean = Ravlm(tmp_path / "clean", tmp_path / "clean-reports", harness)
    resumed = Ravlm(tmp_path / "resumed", tmp_path / "resumed-reports", harness)
    for ravlm in (clean, resumed):
        ravlm.env.update(SETTINGS)
    clean_uri, resumed_uri = tmp_path / "clean" / "lancedb", tmp_path / "resumed" / "lancedb"

    def clean_stage(args: list[str]) -> int:
        before = commits(clean_uri)
        clean(*args)
        return commits(clean_uri) - before

    killed_at = {}
    # The clean run goes one stage ahead in a thread (one worker: stages in order); each killed stage needs only
    # its clean twin's commit count.
    with ThreadPoolExecutor(max_workers=1) as ahead:
        totals = {name: ahead.submit(clean_stage, args) for name, args in steps}
        for name, args in steps:
            total = totals[name].result()
            assert total >= 2, f"{name} committed {total} table versions: nothing to kill in the middle of"
            killed_at[name] = kill_after(resumed.command(*args), resumed.env, resumed_uri, math.ceil(total / 2),
                                         tmp_path / f"{name}.log")
            assert killed_at[name] < total, f"{name} had committed everything ({total}) before the kill landed"
            resumed(*args)

    assert_same_tables(tmp_path / "clean", tmp_path / "resumed")
    print("killed after (commits of the clean run):", {n: f"{k}/{totals[n].result()}" for n, k in killed_at.items()})
