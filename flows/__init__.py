"""Prefect flows that read like ravlm's DAG (ingest → embed → index → VQA / caption → evaluate → report), and
the `ravlm` CLI that runs them."""
import logging
import os
import sys

# Applied on import, before anything imports Prefect: no network here but the package registries, no model hub.
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # The library logs with `logging` (no Prefect import); this shows its progress lines in flow run logs.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "ravlm_core",
    # ...and outside a flow run (a library call in a notebook, `ravlm search`) they stay local, without a warning.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}.items():
    os.environ.setdefault(_name, _value)


def _route_library_logs() -> None:
    """Send `ravlm_core`'s log lines to the flow run logs on every route.

    Prefect copies its "prefect.extra" handlers to the loggers PREFECT_LOGGING_EXTRA_LOGGERS names when it sets
    up logging, and leaves their level at WARNING. The CLI and `serve` import this package first, so the
    variable above is in time; a process worker imports Prefect first and sets up its logging before the flow's
    module is loaded, so the handlers are copied here instead."""
    library = logging.getLogger("ravlm_core")
    library.setLevel(logging.INFO)
    if "prefect" in sys.modules:
        for handler in logging.getLogger("prefect.extra").handlers:
            if handler not in library.handlers:
                library.addHandler(handler)


_route_library_logs()
