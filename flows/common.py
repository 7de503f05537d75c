"""What every flow needs: settings from overrides, the task runner, the GPU slot, the encoder and run records."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

from ravlm_core.config import ENVIRONMENT, Settings
from ravlm_core.errors import UserError

if TYPE_CHECKING:
    from ravlm_core.encoders import EncoderRef


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
        return _ray_runner(settings)
    raise UserError(f"unknown runner {settings.runner!r}: use threads, dask or ray")


def _ray_runner(settings: Settings):
    """prefect-ray's runner on the cluster at `runner_address` (ray://head:10001 or head:6379), or on a local Ray
    instance it starts when none is given. Tasks are thin and take paths, so any worker that can import ravlm and
    reach the store runs them; each worker process first runs `prepare_ray_worker`."""
    try:
        from prefect_ray import RayTaskRunner
        from prefect_ray.context import remote_options
    except ImportError:
        raise UserError("--runner ray needs prefect-ray: pip install 'ravlm[ray]'") from None

    class GpuAwareRayTaskRunner(RayTaskRunner):
        """Tasks holding the `ravlm-gpu` tag also ask Ray for their share of a GPU: Ray then places them on a
        node with one and shows it to them (it hides GPUs from tasks that asked for none)."""

        def submit(self, task, parameters, wait_for=None, dependencies=None):
            if GPU_TAG not in task.tags:
                return super().submit(task, parameters, wait_for, dependencies)
            with remote_options(num_gpus=1 / settings.gpu_concurrency):
                return super().submit(task, parameters, wait_for, dependencies)

    runtime_env = {"worker_process_setup_hook": "flows.common.prepare_ray_worker",
                   # The library's log lines and the no-hub rule hold in workers on any node of the cluster.
                   "env_vars": {name: os.environ[name] for name in WORKER_ENV if name in os.environ}}
    return GpuAwareRayTaskRunner(address=settings.runner_address or None, init_kwargs={"runtime_env": runtime_env})


# Passed to Ray workers: the environment apply_environment sets, and where the Prefect API is.
WORKER_ENV = ("PREFECT_API_URL", *ENVIRONMENT)


def prepare_ray_worker() -> None:
    """Run by Ray in each worker process before its first task. Importing this module has imported `flows`,
    which routes ravlm_core's log lines (e.g. "embedded ... read/encode/write") to the flow run's logs in Prefect
    and to the console, as with the thread runner."""
    import flows

    flows._route_library_logs()


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


def resolve_run_encoder(settings: Settings, device: str, retrain: bool = False) -> EncoderRef:
    """The run's encoder (`Settings.encoder`), resolved by a task on `device`: it trains the built-in alignment
    heads there when they are missing or `retrain` asks."""
    from tasks.embed import resolve_encoder

    return on_device(device, settings)(resolve_encoder)(encoder_spec=settings.encoder, store_uri=settings.store_uri,
                                                        models_dir=str(settings.models_dir), device=device,
                                                        retrain=retrain)


def record_run(flow, flow_run, state) -> None:
    """Flow hook (completion, failure, crash): one `runs` row in the flow's store, for `ravlm status`.

    Never raises: a store that cannot be written must not turn a finished run into a failed one."""
    import logging

    from ravlm_core.query.status import record_run as write
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
