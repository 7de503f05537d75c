"""What every flow needs: settings from overrides and the task runner."""
from __future__ import annotations

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
