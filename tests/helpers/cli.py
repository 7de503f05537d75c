"""The `ravlm` CLI as tests run it: a separate process, as a user would, against the test harness's server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Ravlm:
    """Runs `ravlm --data-dir D --reports-dir R <args> --json` as a user would, against the harness's server, from
    the repository root or from `cwd` (relative data and reports dirs are read from there)."""

    def __init__(self, data_dir: Path, reports_dir: Path, api_url: str, cwd: Path = ROOT):
        self.dirs, self.cwd = (data_dir, reports_dir), cwd
        self.options = ["--data-dir", str(data_dir), "--reports-dir", str(reports_dir)]
        # This checkout's code from any working directory.
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": path}

    def __call__(self, *args: str):
        done = self.raw(*args, "--json")
        assert done.returncode == 0, done.stderr[-4000:]
        return json.loads(done.stdout)  # stdout holds exactly one JSON document: logs go to stderr

    def raw(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=600)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "flows.cli", *self.options, *args]
