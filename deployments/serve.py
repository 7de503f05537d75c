"""Serve ravlm's deployments from this process: `python deployments/serve.py` (or `ravlm serve`; needs a Prefect
server). Operators then start work with e.g. `prefect deployment run nightly/ravlm-nightly`, and the nightly one
also runs on its schedule (RAVLM_NIGHTLY_CRON, RAVLM_NIGHTLY_TIMEZONE, RAVLM_NIGHTLY_SOURCES; default 02:00 UTC
over easy-vqa). For a work pool instead of a serving process, see deployments/prefect.yaml.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import flows  # noqa: E402,F401  (its apply_environment runs before Prefect is imported)
from flows.serve import serve_all  # noqa: E402

if __name__ == "__main__":
    serve_all()
