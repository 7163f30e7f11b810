"""Progress and status messages go through the ``landmarks_lib`` logger (``logging``), so that a notebook or a caller
can quiet them (``logging.getLogger("landmarks_lib").setLevel(logging.WARNING)``) or route them; a command's results
(reports, tables, JSON) stay on stdout as plain output.

``show()`` (called by the ``landmarks`` command and at the start of every notebook) prints the package's INFO
messages on the current ``sys.stdout``, one line each, as the runner and the notebooks always showed them; it adds
its handler once and leaves a level the caller set alone.
"""

from __future__ import annotations

import logging
import sys

NAME = "landmarks_lib"


class _CurrentStdout(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is at each message (a notebook cell's, a captured one)."""

    def __init__(self):
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # logging.StreamHandler sets it in __init__
        pass


def logger(module: str) -> logging.Logger:
    """The logger of a module of the package (``logger(__name__)``), a child of ``landmarks_lib``."""
    return logging.getLogger(module if module.startswith(NAME) else f"{NAME}.{module}")


def show(level: int = logging.INFO) -> logging.Logger:
    """Print the package's messages of ``level`` and above on stdout: adds one stdout handler to the
    ``landmarks_lib`` logger (once) and sets its level when the caller has set none. Returns that logger."""
    log = logging.getLogger(NAME)
    if not any(isinstance(h, _CurrentStdout) for h in log.handlers):
        log.addHandler(_CurrentStdout())
    if log.level == logging.NOTSET:
        log.setLevel(level)
    log.propagate = False
    return log
