"""A real Prefect server on loopback, with its own home and database, and `ravlm serve` against it.

An operator's `prefect deployment run nightly/ravlm-nightly --param ...` completes and writes the tables and the
report artifact; the server's scheduler creates the nightly's scheduled run (cron a few minutes away) and the
serving process runs it when it is due; the library's log lines reach the run logs. Everything started here is
stopped here.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from ravlm_core.schemas import IMAGES
from ravlm_core.store import Store
from tests.helpers.shapes import make_shapes_dataset

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: stopped whole, children included


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait(what: str, check, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Api:
    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url, timeout=30)

    def post(self, path: str, body: dict) -> list | dict:
        response = self.client.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def runs_of(self, deployment_id: str) -> list[dict]:
        return self.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})

    def all_logs(self) -> list[dict]:
        logs, page = [], None
        while page != []:
            page = self.post("/logs/filter", {"limit": 200, "offset": len(logs)})
            logs += page
        return logs

    def run(self, run_id: str) -> dict:
        return self.client.get(f"/flow_runs/{run_id}").json()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A Prefect server and `ravlm serve` with the nightly due 3 minutes from now, over a small shapes folder."""
    tmp = tmp_path_factory.mktemp("deployments")
    folder = tmp / "shapes"
    make_shapes_dataset(folder, n_train=24, n_test=8, seed=3)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "RAVLM_"))}
    env.update({"PREFECT_HOME": str(tmp / "prefect"), "PREFECT_API_URL": url,
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect.db'}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "HF_HUB_OFFLINE": "1"})
    server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                    tmp / "server.log")
    processes = [server]
    try:
        _wait("the server's health check", lambda: _healthy(url), 240)
        due = datetime.now(timezone.utc) + timedelta(minutes=3)
        serve_env = {**env, "RAVLM_DATA_DIR": str(tmp / "data"), "RAVLM_REPORTS_DIR": str(tmp / "reports"),
                     "RAVLM_NIGHTLY_CRON": f"{due.minute} {due.hour} * * *", "RAVLM_NIGHTLY_TIMEZONE": "UTC",
                     "RAVLM_NIGHTLY_SOURCES": json.dumps([{"source": str(folder), "dataset": "shapes"}])}
        serving = _start([sys.executable, "-m", "flows.cli", "serve"], serve_env, tmp / "serve.log")
        processes.append(serving)
        api = Api(url)
        deployment = _wait("the served nightly deployment", lambda: api.post(
            "/deployments/filter", {"deployments": {"name": {"any_": ["ravlm-nightly"]}}}), 180)[0]
        yield {"api": api, "env": env, "deployment": deployment, "tmp": tmp, "folder": folder, "due": due,
               "store": Store(str(tmp / "data" / "lancedb")), "serving": serving, "processes": processes}
    finally:
        for process in reversed(processes):
            _stop(process)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _finished(api: Api, run_id: str) -> dict | None:
    run = api.run(run_id)
    return run if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None


def test_an_operators_deployment_run_completes_with_tables_report_and_library_logs(served):
    api, tmp = served["api"], served["tmp"]
    sources = json.dumps([{"source": str(served["folder"]), "dataset": "shapes"}])
    done = subprocess.run([str(BIN / "prefect"), "deployment", "run", "nightly/ravlm-nightly", "--param",
                           f"sources={sources}"], cwd=ROOT, env=served["env"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    manual = [r for r in api.runs_of(served["deployment"]["id"]) if not r["auto_scheduled"]]
    assert len(manual) == 1
    run = _wait("the nightly run to finish", lambda: _finished(api, manual[0]["id"]), 600, every=5)
    assert run["state_type"] == "COMPLETED", (tmp / "serve.log").read_text()[-3000:]
    assert served["store"].count(IMAGES) == 32
    artifacts = api.post("/artifacts/filter", {"artifacts": {"key": {"any_": ["ravlm-eval-shapes"]}}})
    assert artifacts and "VQA accuracy" in artifacts[0]["data"]
    # Lines of ravlm_core's own loggers, in the run logs of the subflows that did the work.
    logs = api.all_logs()
    assert any(e["name"] == "ravlm_core.embed.shards" and "embedded" in e["message"] for e in logs)
    names = [r["name"] for r in api.post("/flow_runs/filter", {})]
    assert any(name.startswith("ingest-shapes-") for name in names)  # readable run names


def test_the_scheduler_creates_the_nightly_run_and_the_serving_process_runs_it_when_due(served):
    api = served["api"]
    scheduled = _wait("a run created by the scheduler", lambda: [
        r for r in api.runs_of(served["deployment"]["id"]) if r["auto_scheduled"]], 120)
    first = min(scheduled, key=lambda r: r["expected_start_time"])
    assert first["expected_start_time"].startswith(served["due"].strftime("%Y-%m-%dT%H:%M"))
    wait = (served["due"] - datetime.now(timezone.utc)).total_seconds()
    run = _wait("the scheduled nightly to finish", lambda: _finished(api, first["id"]), max(wait, 0) + 420,
                every=5)
    assert run["state_type"] == "COMPLETED", (served["tmp"] / "serve.log").read_text()[-3000:]


def test_prefect_deploy_all_from_the_repo_then_a_process_worker_runs_a_stage_with_the_library_logs(served):
    """The work-pool route: `prefect deploy --all` takes the nightly's schedule from the same settings as `ravlm
    serve`, and a run picked up by `prefect worker start` logs ravlm_core's lines into its run logs."""
    api, tmp = served["api"], served["tmp"]
    _stop(served["serving"])  # from here on, only the worker may pick runs up (deploy reuses the served names)
    env = {**served["env"], "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAVLM_HOME": str(ROOT),
           "RAVLM_DATA_DIR": str(tmp / "worker-data"), "RAVLM_NIGHTLY_CRON": "30 1 * * *",
           "RAVLM_NIGHTLY_TIMEZONE": "Europe/Paris"}

    def prefect(*args: str) -> str:
        done = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    prefect("work-pool", "create", "ravlm", "--type", "process")
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    names = ["ravlm-nightly", "ravlm-demo", "ravlm-ingest", "ravlm-embed", "ravlm-vqa", "ravlm-caption", "ravlm-eval"]
    deployed = {d["name"]: d for d in api.post("/deployments/filter", {"deployments": {"name": {"any_": names}}})}
    assert {n: d["work_pool_name"] for n, d in deployed.items()} == dict.fromkeys(names, "ravlm")
    [schedule] = api.client.get(f"/deployments/{deployed['ravlm-nightly']['id']}/schedules").json()
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"]) == ("30 1 * * *", "Europe/Paris")

    prefect("deployment", "run", "ingest/ravlm-ingest", "--param", f"source={served['folder']}",
            "--param", "dataset=worked")
    [queued] = [r for r in api.runs_of(deployed["ravlm-ingest"]["id"]) if r["state_type"] == "SCHEDULED"]
    worker = _start([str(BIN / "prefect"), "worker", "start", "--pool", "ravlm", "--run-once"], env,
                    tmp / "worker.log")
    served["processes"].append(worker)
    run = _wait("the worker's ingest run to finish", lambda: _finished(api, queued["id"]), 300, every=3)
    assert run["state_type"] == "COMPLETED", (tmp / "worker.log").read_text()[-3000:]
    assert Store(str(tmp / "worker-data" / "lancedb")).count(IMAGES) == 32
    # The run's log lines reach the API in batches, some after its state says COMPLETED: wait for the library's.
    def scan_logged():
        logs = api.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [queued["id"]]}}, "limit": 200})
        return any(e["name"] == "ravlm_core.ingest.scan" and "new images" in e["message"] for e in logs)

    _wait("the library's ingest log line in the run's logs", scan_logged, 60)
