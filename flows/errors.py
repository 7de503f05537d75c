"""Keep user errors to one line: Prefect logs every failed task and flow run with its traceback, which for a
mistake in a manifest or an option buries the one line that says what to fix. The CLI prints that line."""
from __future__ import annotations

import logging

from ravlm_core.errors import UserError


def _is_user_error(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    while error is not None:
        if isinstance(error, UserError):
            return True
        error = error.__cause__ or error.__context__
    # "Finished in state Failed('Task run encountered an exception ManifestError: ...')" carries no exc_info.
    message = record.getMessage()
    return "Failed(" in message and any(cls.__name__ in message for cls in _user_error_classes())


def _user_error_classes() -> list[type]:
    found, todo = [], [UserError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


class _DropUserErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_user_error(record)


def quiet_user_errors() -> None:
    """Drop user-error records from Prefect's run loggers: the CLI prints the error's one line instead."""
    import prefect  # noqa: F401 - importing it sets up its logging handlers

    # On the loggers the run loggers write to (Prefect may replace handlers when it configures logging again)...
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropUserErrors) for f in logger.filters):
            logger.addFilter(_DropUserErrors())
    # ...and on the console handlers, for records that other loggers propagate to them.
    for name in ("prefect", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _DropUserErrors) for f in handler.filters):
                handler.addFilter(_DropUserErrors())
