"""What every flow needs: settings from overrides, the task runner, and the shards of a dataset."""
from __future__ import annotations

from pathlib import Path

from ravlm_core.config import Settings


def settings_from(overrides: dict | None) -> Settings:
    """Flow parameters carry only overrides (JSON-able); env vars and ravlm.toml fill in the rest."""
    return Settings(**(overrides or {}))


def shards_of(settings: Settings, dataset: str, split: str | None = None) -> list[str]:
    """A dataset's Parquet shards (optionally one split's: shard files are named `<split>-<hash>.parquet`)."""
    folder = settings.parquet_dir / dataset
    paths = sorted(str(p) for p in folder.glob("*.parquet")) if folder.exists() else []
    return [p for p in paths if split is None or Path(p).name.startswith(f"{split}-")]


def datasets_of(settings: Settings) -> list[str]:
    folder = settings.parquet_dir
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


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
    raise ValueError(f"unknown runner {settings.runner!r}: use threads, dask or ray")
