"""The `ravlm` CLI as tests run it: a separate process, as a user would, against the test harness's server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Ravlm:
    """Runs `ravlm --data-dir D --reports-dir R <args> --json` as a user would, against the harness's server."""

    def __init__(self, data_dir: Path, reports_dir: Path, api_url: str):
        self.dirs = (data_dir, reports_dir)
        self.options = ["--data-dir", str(data_dir), "--reports-dir", str(reports_dir)]
        self.env = {**os.environ, "PREFECT_API_URL": api_url}

    def __call__(self, *args: str):
        done = self.raw(*args, "--json")
        assert done.returncode == 0, done.stderr[-4000:]
        return json.loads(done.stdout)  # stdout holds exactly one JSON document: logs go to stderr

    def raw(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=600)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "flows.cli", *self.options, *args]
