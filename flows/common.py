"""What every flow needs: settings from overrides and the task runner."""
from __future__ import annotations

from functools import lru_cache

from ravlm_core.config import Settings
from ravlm_core.errors import UserError


def settings_from(overrides: dict | None) -> Settings:
    """Flow parameters carry only overrides (JSON-able); env vars and ravlm.toml fill in the rest."""
    return Settings(**(overrides or {}))


def task_runner(settings: Settings):
    """Where tasks run: threads here, or an existing Dask / Ray cluster (never a home-made scheduler)."""
    if settings.runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=settings.workers)
    if settings.runner == "dask":
        from prefect_dask import DaskTaskRunner  # pip install 'ravlm[dask]'

        return DaskTaskRunner(address=settings.runner_address or None)
    if settings.runner == "ray":
        from prefect_ray import RayTaskRunner  # pip install 'ravlm[ray]'

        return RayTaskRunner(address=settings.runner_address or None)
    raise UserError(f"unknown runner {settings.runner!r}: use threads, dask or ray")


GPU_TAG = "ravlm-gpu"


def on_device(device: str, settings: Settings):
    """What turns a task into the task as it runs on `device`: on a GPU it takes a slot of the server-wide
    `ravlm-gpu` tag limit first, so two flow runs (or Dask / Ray workers) never load models onto one GPU at once
    and run out of its memory. On the CPU tasks are left as they are."""
    if not device.startswith("cuda"):
        return lambda task: task
    _ensure_tag_limit(GPU_TAG, settings.gpu_concurrency)
    return lambda task: task.with_options(tags={GPU_TAG})


@lru_cache(maxsize=None)
def _ensure_tag_limit(tag: str, slots: int) -> None:
    """Create the tag's concurrency limit when the server has none; an operator's own setting is kept."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(tag)
        except ObjectNotFound:
            client.create_concurrency_limit(tag=tag, concurrency_limit=slots)


def record_run(flow, flow_run, state) -> None:
    """Flow hook (completion, failure, crash): one `runs` row in the flow's store, for `ravlm status`.

    Never raises: a store that cannot be written must not turn a finished run into a failed one."""
    import logging

    from ravlm_core.status import record_run as write
    from ravlm_core.store import Store

    try:
        settings = settings_from((flow_run.parameters or {}).get("overrides"))
        message = state.message or ""
        if state.is_completed():
            message = message or "completed"
        write(Store(settings.store_uri), str(flow_run.id), flow.name, flow_run.name, state.type.value,
              message.splitlines()[0] if message else "", flow_run.start_time)
    except Exception as error:  # noqa: BLE001 - reporting must not fail the run it reports on
        logging.getLogger(__name__).warning("could not record run %s in the store: %s", flow_run.name, error)


# Every flow reports its outcome to the store with these.
RUN_HOOKS = {"on_completion": [record_run], "on_failure": [record_run], "on_crashed": [record_run],
             "on_cancellation": [record_run]}


def run_name(stage: str, *parameters: str):
    """A readable flow run name: the stage, the named parameters' values and the UTC date and time, e.g.
    `ingest-easy-vqa-20261124-0200` (the flow run's parameters are read when the run starts)."""
    def name() -> str:
        from datetime import datetime, timezone

        from prefect.runtime import flow_run

        values = flow_run.parameters or {}
        parts = [stage, *(str(values[p]) for p in parameters if values.get(p))]
        return f"{'-'.join(parts)}-{datetime.now(timezone.utc):%Y%m%d-%H%M}"

    return name
