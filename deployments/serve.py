"""Serve ravlm's deployments from this process: `python deployments/serve.py` (needs a Prefect server).

Operators then start work with e.g. `prefect deployment run nightly/ravlm-nightly`, and the nightly one
also runs on its cron schedule. For a work pool instead of a serving process, see deployments/prefect.yaml.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import flows  # noqa: E402,F401  (sets the offline environment before Prefect is imported)
from prefect import serve  # noqa: E402

from flows.embed import embed_flow  # noqa: E402
from flows.evaluate import eval_flow  # noqa: E402
from flows.ingest import ingest_flow  # noqa: E402
from flows.jobs import caption_flow, vqa_flow  # noqa: E402
from flows.pipeline import demo_flow, nightly_flow  # noqa: E402

NIGHTLY_CRON = os.environ.get("RAVLM_NIGHTLY_CRON", "0 2 * * *")


def deployments() -> list:
    """Every flow as a deployment; only `nightly` is scheduled, the rest run on `prefect deployment run`."""
    return [
        nightly_flow.to_deployment(name="ravlm-nightly", cron=NIGHTLY_CRON,
                                   parameters={"sources": [{"source": "easy-vqa", "dataset": "easy-vqa"}]}),
        demo_flow.to_deployment(name="ravlm-demo"),
        ingest_flow.to_deployment(name="ravlm-ingest", parameters={"source": "easy-vqa", "dataset": "easy-vqa"}),
        embed_flow.to_deployment(name="ravlm-embed"),
        vqa_flow.to_deployment(name="ravlm-vqa", parameters={"dataset": "easy-vqa"}),
        caption_flow.to_deployment(name="ravlm-caption", parameters={"dataset": "easy-vqa"}),
        eval_flow.to_deployment(name="ravlm-eval", parameters={"dataset": "easy-vqa"}),
    ]


if __name__ == "__main__":
    serve(*deployments())
