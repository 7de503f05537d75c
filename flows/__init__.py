"""Prefect flows that read like ravlm's DAG (ingest → embed → index → VQA / caption → evaluate → report), and
the `ravlm` CLI that runs them."""
import logging
import os

# Applied on import, before anything imports Prefect: no network here but the package registries, no model hub.
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # The library logs with `logging` (no Prefect import); this shows its progress lines in flow run logs.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "ravlm_core",
}.items():
    os.environ.setdefault(_name, _value)

# Prefect attaches its handlers to the extra loggers but leaves their level at WARNING.
logging.getLogger("ravlm_core").setLevel(logging.INFO)
