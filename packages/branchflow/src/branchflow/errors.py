"""Errors that the command line reports as one line, without a traceback."""

from __future__ import annotations


class BranchflowError(Exception):
    """A problem the user can fix; the message says how."""
