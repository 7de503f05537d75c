"""Prefect flows that read like ravlm's DAG (ingest → embed → index → VQA / caption → evaluate → report), and
the `ravlm` CLI that runs them."""
import logging
import sys

from ravlm_core.config import apply_environment

apply_environment()  # on import, before anything imports Prefect or a model library


def _route_library_logs() -> None:
    """Send `ravlm_core`'s log lines to the flow run logs on every route.

    Prefect copies its "prefect.extra" handlers to the loggers PREFECT_LOGGING_EXTRA_LOGGERS names when it sets
    up logging, and leaves their level at WARNING. The CLI and `serve` import this package first, so the
    variable (set by `apply_environment` above) is in time; a process worker imports Prefect first and sets up
    its logging before the flow's module is loaded, so the handlers are copied here instead."""
    library = logging.getLogger("ravlm_core")
    library.setLevel(logging.INFO)
    if "prefect" in sys.modules:
        for handler in logging.getLogger("prefect.extra").handlers:
            if handler not in library.handlers:
                library.addHandler(handler)


_route_library_logs()
