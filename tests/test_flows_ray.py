"""`--runner ray`: the same small pipeline (ingest → embed → eval) through the CLI once on threads and once on a
local Ray instance (the kind of existing cluster `--runner-address` names), with the same metrics and tables.

Slow (two whole CLI pipelines; 15 min on 2 cores shared with other work): `python -m pytest -m slow tests/test_flows_ray.py`.
"""
from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

from ravlm_core.store import Store
from tests.helpers.cli import ROOT, Ravlm
from tests.helpers.shapes import make_shapes_dataset

pytestmark = [pytest.mark.slow, pytest.mark.server]

N_TRAIN, N_TEST, SHARD_SIZE = 32, 8, 8  # 5 content shards: embedded in parallel


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    """A local Ray instance sized for this machine, started by the test; workers import this checkout."""
    # Here, not at import: the default (not slow) run deselects this module instead of reporting it skipped.
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'ravlm[ray]'")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved]))  # inherited by Ray's workers
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                       _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        os.environ.pop("PYTHONPATH") if saved is None else os.environ.__setitem__("PYTHONPATH", saved)


def pipeline(ravlm: Ravlm, folder) -> dict:
    done = {}
    for name, args in (("ingest", ["ingest", str(folder), "--dataset", "shapes"]), ("embed", ["embed"]),
                       ("eval", ["eval", "shapes"])):
        start = time.perf_counter()
        result = ravlm.raw(*args, "--json")
        assert result.returncode == 0, result.stderr[-4000:]
        print(f"{ravlm.options[-1]} {name}: {time.perf_counter() - start:.1f}s")  # shown with -s
        done[name] = result
    return done


@pytest.fixture(scope="module")
def runs(harness, ray_address, tmp_path_factory):
    import json

    tmp = tmp_path_factory.mktemp("ray-pipeline")
    folder = tmp / "shapes"
    make_shapes_dataset(folder, n_train=N_TRAIN, n_test=N_TEST, seed=1, fmt="jsonl")
    outcome = {}
    for runner in ("threads", "ray"):
        ravlm = Ravlm(tmp / runner / "data", tmp / runner / "reports", harness)
        ravlm.env["RAVLM_SHARD_SIZE"] = str(SHARD_SIZE)
        ravlm.env["RAY_DEDUP_LOGS"] = "0"  # Ray folds alike worker lines into "[repeated Nx]" on the console
        options = ["--runner", "ray", "--runner-address", ray_address] if runner == "ray" else ["--runner", "threads"]
        # Global options go before the command.
        ravlm.options += options
        done = pipeline(ravlm, folder)
        outcome[runner] = {"store": Store(str(tmp / runner / "data" / "lancedb")), "stderr": done["embed"].stderr,
                           "data_dir": str(tmp / runner / "data"),
                           **{name: json.loads(result.stdout) for name, result in done.items()}}
    return outcome


def test_ray_runs_tasks_in_its_workers(runs):
    # Ray forwards a worker's output to the driver's console prefixed with the task's name and process id.
    in_workers = re.findall(r"\(embed_shard pid=(\d+)[^)]*\).*embedded ", runs["ray"]["stderr"])
    assert len(in_workers) == runs["ray"]["embed"]["shards"] == (N_TRAIN + N_TEST) // SHARD_SIZE
    assert str(os.getpid()) not in in_workers


def test_same_metrics_as_threads(runs):
    threads, ray_run = runs["threads"]["eval"], runs["ray"]["eval"]
    for section in ("vqa", "retrieval", "caption"):
        assert _numbers(ray_run[section]) == pytest.approx(_numbers(threads[section]), abs=1e-9), section
    assert ray_run["vqa"]["n"] == threads["vqa"]["n"] > 0


def _numbers(tree, prefix="") -> dict[str, float]:
    """Every number of a nested metrics dict, by its path."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _numbers(value, f"{prefix}/{key}").items()}
    return {prefix: float(tree)} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


def test_same_table_contents_as_threads(runs):
    threads, ray_run = runs["threads"]["store"], runs["ray"]["store"]
    names = set(threads.db.list_tables().tables)
    assert set(ray_run.db.list_tables().tables) == names
    for name in names - {"runs", "eval_runs"}:  # those two hold run ids and times
        assert ray_run.count(name) == threads.count(name), name
    vectors = runs["threads"]["embed"]["model_tag"] + "__image_vectors"
    a, b = (_by_id(store, vectors, "image_id") for store in (threads, ray_run))
    assert a.keys() == b.keys() and len(a) == N_TRAIN + N_TEST
    # Same encoder, same images: the same vectors (up to float summation order across CPU thread counts).
    assert max(float(np.abs(a[i] - b[i]).max()) for i in a) < 1e-5
    predictions = ["job_id", "pred_id", "answer"]
    pa_, pb = (store.read("vqa_predictions", columns=predictions).sort_by("pred_id").to_pylist()
               for store in (threads, ray_run))
    assert pa_ == pb


def _by_id(store: Store, table: str, key: str) -> dict[str, np.ndarray]:
    rows = store.read(table, columns=[key, "vector"])
    return dict(zip(rows.column(key).to_pylist(), np.asarray(rows.column("vector").to_pylist(), np.float32)))


def test_worker_log_lines_reach_prefect_and_the_console(runs, harness):
    """The library's "embedded <shard>: ... read/encode/write" lines, logged inside Ray workers, are in the
    embed flow run's logs on the server (Prefect's UI) and on the CLI's console, as with threads."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId

    shards = (N_TRAIN + N_TEST) // SHARD_SIZE
    assert runs["ray"]["stderr"].count("embedded ") >= shards
    with get_client(sync_client=True) as client:
        embed_runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["embed"])), limit=200)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in embed_runs])),
                                limit=200)
    for runner in ("threads", "ray"):
        embedded = [log for log in logs if log.message.startswith("embedded ") and runs[runner]["data_dir"] in log.message]
        assert len(embedded) == shards, runner
        assert all(log.task_run_id for log in embedded)  # attributed to the embed_shard task run that logged it
