"""Errors the user can fix: the CLI prints their message as one line (no traceback unless --debug)."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave (a manifest, a dataset name, an option): the message says what and how to fix.

    Keep messages to one line that names the file, row, dataset or option involved.
    """
