"""How tasks retry: only errors that may pass (a store busy or briefly unreachable), after a growing pause.

A user error, a missing or corrupt file, or bad data fails the same way every time: retrying it at once only
delays the one-line report of what is wrong, so those fail on the first attempt."""
from __future__ import annotations

from prefect.tasks import exponential_backoff

from ravlm_core.errors import PERMANENT, UnitFailed


def transient(task, task_run, state) -> bool:
    """retry_condition_fn: retry unless the exception is one that a retry cannot fix."""
    try:
        state.result()
    except UnitFailed as error:
        return not error.permanent
    except PERMANENT:
        return False
    except Exception:  # noqa: BLE001 - anything else (I/O hiccups, commit conflicts, timeouts) may pass
        return True
    return False


# Three more attempts after 5 s, 10 s and 20 s (each +-50%), for the errors `transient` lets through.
RETRY = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=5), "retry_jitter_factor": 0.5,
         "retry_condition_fn": transient}
