"""Every flow as a deployment, served from one process (`ravlm serve`, deployments/serve.py)."""
from __future__ import annotations

from prefect import serve
from prefect.schedules import Cron

from flows.embed import embed_flow
from flows.evaluate import eval_flow
from flows.ingest import ingest_flow
from flows.jobs import caption_flow, vqa_flow
from flows.pipeline import demo_flow, nightly_flow
from ravlm_core.config import Settings


def deployments(settings: Settings | None = None) -> list:
    """Every flow as a deployment; only `nightly` is scheduled (Settings.nightly_cron in nightly_timezone, over
    nightly_sources), the rest run on `prefect deployment run`."""
    settings = settings or Settings()
    nightly = nightly_flow.to_deployment(
        name="ravlm-nightly", schedule=Cron(settings.nightly_cron, timezone=settings.nightly_timezone),
        parameters={"sources": settings.nightly_sources})
    return [
        nightly,
        demo_flow.to_deployment(name="ravlm-demo"),
        ingest_flow.to_deployment(name="ravlm-ingest", parameters={"source": "easy-vqa", "dataset": "easy-vqa"}),
        embed_flow.to_deployment(name="ravlm-embed"),
        vqa_flow.to_deployment(name="ravlm-vqa", parameters={"dataset": "easy-vqa"}),
        caption_flow.to_deployment(name="ravlm-caption", parameters={"dataset": "easy-vqa"}),
        eval_flow.to_deployment(name="ravlm-eval", parameters={"dataset": "easy-vqa"}),
    ]


def serve_all(settings: Settings | None = None) -> None:
    """Serve every deployment until interrupted; scheduled nightly runs and `prefect deployment run` both land
    here (needs a Prefect server: PREFECT_API_URL)."""
    serve(*deployments(settings))
