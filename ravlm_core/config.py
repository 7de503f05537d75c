"""The one place defaults live: `Settings` from RAVLM_* environment variables, `ravlm.toml`, and CLI overrides."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from ravlm_core.uris import join

# The environment every ravlm process runs in, set by `apply_environment` before Prefect, huggingface_hub or
# transformers is imported (they read it at import): flows/__init__.py (so the CLI, `serve` and flow runs on a
# worker), tests/conftest.py and the benchmarks call it. A value already in the environment wins.
ENVIRONMENT = {
    # No network here but the package registries: never phone home, never reach for a model hub (models load from
    # local folders or the local Hugging Face cache).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # A throwaway Prefect server's first start runs its migrations (~20 s on 2 cores, Prefect's whole default wait).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # The library logs with `logging` (no Prefect import); this shows its progress lines in flow run logs...
    "PREFECT_LOGGING_EXTRA_LOGGERS": "ravlm_core",
    # ...and outside a flow run (a library call in a notebook, `ravlm search`) they stay local, without a warning.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def apply_environment() -> None:
    """Set ENVIRONMENT's variables this process has not set itself."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)


class Settings(BaseSettings):
    """Frozen run configuration. Precedence: explicit arguments > RAVLM_* env > ./ravlm.toml > defaults."""

    model_config = SettingsConfigDict(env_prefix="RAVLM_", toml_file="ravlm.toml", frozen=True, extra="forbid")

    # A local folder, or a URI on object storage (s3://bucket/ravlm, gs://..., any pyarrow file system): the
    # store (unless lancedb_uri says otherwise), Parquet shards, staging plans and trained models live under it,
    # so every machine with the same setting works from the same files (ravlm_core.locations).
    data_dir: str = "data"
    # Any LanceDB URI: a local folder, s3://bucket/path, gs://..., db://remote. Empty means <data_dir>/lancedb.
    lancedb_uri: str = ""
    reports_dir: Path = Path("reports")
    # Where this machine keeps its copies of model folders from object storage (ravlm_core.locations); empty means
    # $XDG_CACHE_HOME/ravlm, else ~/.cache/ravlm (see `model_cache`).
    cache_dir: str = ""
    # "auto" picks cuda when present, else cpu.
    device: str = "auto"
    # Images per Parquet shard: the unit of parallel work and of incremental re-embedding.
    shard_size: int = 1000
    # Texts per batch (embedding uses 4x this).
    batch_size: int = 64
    # Images per embedding batch; 0 = the encoder's own: measured once per machine on a CPU, 256 on a GPU. Fix it
    # when runs must give bit-identical vectors: the float rounding of a forward pass depends on its batch.
    image_batch_size: int = 0
    # "builtin" (EfficientNet-Lite0 + MiniLM with trained alignment heads), a local model folder, or a hub id.
    encoder: str = "builtin"
    # Neighbours retrieved per item for the retrieval-augmented jobs.
    k: int = 16
    # The split a knowledge base named without one (`--kb DATASET`, or the query dataset by default) stands for.
    kb_split: str = "train"
    # Below this cosine to the closest knowledge-base question, a query question counts as new and retrieval
    # falls back to plain image neighbours. Off (0.0) by default: benchmarks/cross_kb.py measured the fallback
    # lowering cross-KB VQA accuracy at every threshold it tried (0.956 off, 0.883 at 0.8, 0.761 at 0.9).
    question_match_min: float = 0.0
    # Match a question only to knowledge-base questions of the same form (yes/no or open, negated or not; English
    # wording rules). benchmarks/cross_kb.py measured it; switch it off for questions in other languages.
    match_question_form: bool = True
    # Leakage guard: a query never retrieves its own bytes (under any name) nor knowledge-base images whose 16x16
    # pixel signature is within `near_duplicate_distance` grey levels of its own (re-encodes, resizes, small
    # edits; benchmarks/leakage_bench.py chose it); false keeps such hits, still counted.
    leakage_guard: bool = True
    near_duplicate_distance: float = 3.0
    # Vector tables past this many rows get an ANN index (below it an exact scan is fast and exact).
    min_rows_for_ann: int = 10_000
    # The ANN index's quality gate: after each build or append, recall@10 against exact search on stored vectors
    # must reach this with some (nprobes, refine) setting, else the embed flow fails (ravlm_core/index/ann.py).
    ann_target_recall: float = 0.95
    # Table versions older than this are dropped by the nightly's compaction (time travel works within it).
    keep_versions_days: float = 7.0
    # Images over this many pixels are rejected at ingest as likely decompression bombs.
    max_image_pixels: int = 64_000_000
    # The default is local and server-less; "ray" / "dask" use prefect-ray / prefect-dask.
    runner: str = "threads"
    runner_address: str = ""
    # Concurrent tasks with the thread runner; torch already uses every core inside one task.
    workers: int = 2
    # Tasks that may use a GPU at once, across every flow run of one Prefect server: the slots of the `ravlm-gpu`
    # tag concurrency limit, created with this many when missing (`prefect concurrency-limit` changes it later).
    gpu_concurrency: int = 1
    # The scheduled nightly (`ravlm serve`, deployments/serve.py): when, in which time zone, and what it re-indexes
    # ([{"source": ..., "dataset": ...}, ...] as `nightly_flow` takes them; RAVLM_NIGHTLY_SOURCES as JSON).
    nightly_cron: str = "0 2 * * *"
    nightly_timezone: str = "UTC"
    nightly_sources: list[dict] = [{"source": "easy-vqa", "dataset": "easy-vqa"}]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @field_validator("data_dir", mode="before")
    @classmethod
    def _path_as_text(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    # Below: a Path under a local data_dir, a URI string under one on object storage.
    @property
    def store_uri(self) -> str:
        return self.lancedb_uri or str(join(self.data_dir, "lancedb"))

    @property
    def parquet_dir(self) -> Path | str:
        return join(self.data_dir, "parquet")

    @property
    def models_dir(self) -> Path | str:
        """Where trained models are kept; loaders read them from `locations.local_models(models_dir)`."""
        return join(self.data_dir, "models")

    @property
    def staging_dir(self) -> Path | str:
        return join(self.data_dir, "staging")

    @property
    def model_cache(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ravlm"

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch  # lazy: the CLI must start without importing torch

        return "cuda" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":  # `python -m ravlm_core.config nightly_timezone`: one setting as the flows see it
    import sys

    print(getattr(Settings(), sys.argv[1]))
