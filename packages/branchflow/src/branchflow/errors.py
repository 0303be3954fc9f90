"""Errors that the command line reports as one line, without a traceback, and its exit codes.

The exit codes follow pytest's convention, so CI can tell a rejected change from a broken build:

- `EXIT_OK` (0): passed.
- `EXIT_VERDICT` (1): a check ran and said no: `gate` failed, `check` found undeclared imports,
  `drift --fail-on-drift` found drift, `azureml compile --check` found stale files.
- `EXIT_USAGE` (2): the command line is wrong (click's own: unknown option, bad argument).
- `EXIT_TOOL` (3): the tool could not do its work: a `BranchflowError` (bad config, missing
  file, unreachable server, DVC failure) or an unexpected exception (a bug).
"""

from __future__ import annotations

import functools
from importlib import metadata

EXIT_OK = 0
EXIT_VERDICT = 1
EXIT_USAGE = 2
EXIT_TOOL = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it: not a verdict either


class BranchflowError(Exception):
    """A problem the user can fix; the message says how. Exit status `EXIT_TOOL`."""


def first_line(exc: BaseException, text: str | None = None) -> str:
    """The first line of `text` (default: the exception's own), else the exception's type:
    a library's error as one line of ours."""
    return ((text or str(exc)).strip().splitlines() or [type(exc).__name__])[0]


@functools.cache
def docs_url(page: str) -> str:
    """Where a docs page is for whoever installed branchflow: the `Documentation` URL of its
    package metadata (`[project.urls]`) and the page; the page alone without that metadata."""
    try:
        entries = metadata.metadata("branchflow").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        entries = []
    urls = dict(entry.split(", ", 1) for entry in entries if ", " in entry)
    base = urls.get("Documentation")
    return f"{base.rstrip('/')}/{page}" if base else f"docs/{page}"
