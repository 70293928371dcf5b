"""How pcdet's command-line entry points (tools/*.py, ``python -m pcdet...``) report an input error: one
``error: <message>`` line on stderr and exit code 2, the traceback only in the log file or with ``--debug``."""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any


class InputError(Exception):
    """Base of the errors whose message already names the culprit (a file, a key, a flag): the input, not the
    program, is wrong, so a user needs that line rather than a traceback. The project's error types derive from it
    (next to the builtin type each one also is, e.g. ``ValueError``)."""


# FileNotFoundError is a builtin; its messages here name the missing file, so it is reported the same way.
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, FileNotFoundError)
EXIT_USER_ERROR = 2  # argparse's code for a usage error
_QUALIFIED_LINE = re.compile(r"^[\w.]+: (.+)$")


def one_line_message(exc: BaseException) -> str:
    """The error's message on one line. An error re-raised from a DataLoader worker carries the worker's whole
    traceback in its message; its last line is the original error."""
    text = str(exc).strip() or type(exc).__name__
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        match = _QUALIFIED_LINE.match(last)
        text = match.group(1) if match else last
    return " ".join(text.split())


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether ``--debug`` is one of the tool's own flags (not a value after ``--set``)."""
    # Everything after --set is KEY VALUE pairs (argparse.REMAINDER), never a flag of the tool.
    own = list(argv)[: list(argv).index("--set")] if "--set" in argv else list(argv)
    return "--debug" in own


def _log_traceback_to_files(exc: BaseException) -> None:
    """Write the traceback to the run's log file(s) only: the console gets the one-line message."""
    logger = logging.getLogger("pcdet")
    text = "".join(traceback.format_exception(exc))
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, text.rstrip(), None, None)
            handler.handle(record)


def run_tool(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """Run an entry point's ``main(argv)``; a :data:`USER_ERRORS` error becomes ``error: <message>`` on stderr and
    exit code 2 (its traceback goes to the log file, and to the console as well with ``--debug`` in ``argv``).
    Any other exception is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        main(argv)
    except USER_ERRORS as exc:
        if debug_requested(argv):
            raise
        _log_traceback_to_files(exc)
        print(f"error: {one_line_message(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
