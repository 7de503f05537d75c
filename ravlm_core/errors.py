"""Errors the user can fix (the CLI prints their message as one line, no traceback unless --debug), and errors
that name the unit of work that failed."""
from __future__ import annotations

from contextlib import contextmanager


class UserError(Exception):
    """A mistake in what the user gave (a manifest, a dataset name, an option): the message says what and how to fix.

    Keep messages to one line that names the file, row, dataset or option involved.
    """


class UnitFailed(RuntimeError):
    """One unit of work (a shard, a query part, a model being trained) failed for a reason that is not a mistake
    in the input: the message names the unit and the cause in one line, for the flow run's state, `ravlm status`
    and the CLI. `permanent` says whether retrying can help (a file that stays broken: no; a busy store: yes)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message, permanent)  # both in args: the error survives pickling to and from workers
        self.permanent = permanent

    def __str__(self) -> str:
        return self.args[0]


def first_line(error: BaseException) -> str:
    """The first line of an error's message ("" when it has none), for one-line reports."""
    return next(iter(str(error).strip().splitlines()), "")


# Errors that fail the same way every time: a user error, a missing or unreadable file, bad data.
PERMANENT = (UserError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError, TypeError, KeyError)


@contextmanager
def naming(unit: str):
    """Re-raise any error of the block as a UnitFailed that names `unit` (user errors, which already say what to
    fix, pass through as they are)."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - every other error gains the name of what failed
        reason = first_line(error)
        raise UnitFailed(f"{unit}: {type(error).__name__}{': ' + reason if reason else ''}",
                         isinstance(error, PERMANENT)) from error
