"""The errors a user can act on, and how every command turns them into one line and an exit code.

Every error segtricks raises on purpose derives from ``SegtricksError``; its message is one line that
names the file, flag or service at fault and the fix. Two kinds, by exit code:

- ``BadInput`` (exit 2): what the user typed or wrote is wrong: a flag, a config, grid or study file,
  a name, a dataset folder, a weights file. Changing the command or its files fixes it.
- ``Unavailable`` (exit 1): the input is fine but the machine or a service cannot serve it now: the
  tracking store, a full disk, the Slurm controller. Retrying once that is fixed works.

``command`` wraps a command's ``main``: a ``SegtricksError`` prints ``error: <message>`` and returns
its exit code; Ctrl-C prints one line and returns 130 (the shell's code for SIGINT), after whatever was
running marked its run KILLED; a ``SegtricksWarning`` (a skipped file, a mask that does not look
binary) is one ``warning: <message>`` line, without Python's source line under it; anything else is a
bug and keeps its traceback (it is never reported as a user error). ``prog`` names the command as the
user typed it, for usage lines. Torch-free: every command imports this before anything heavy.
"""
from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional

INTERRUPTED = 130  # what a shell reports for a program stopped by SIGINT (128 + 2)


class SegtricksError(Exception):
    """Base of the errors a user can act on; ``exit_code`` is what a command returns for it."""

    exit_code = 1


class BadInput(SegtricksError):
    """The command's flags or files are wrong (exit status 2)."""

    exit_code = 2


class Unavailable(SegtricksError):
    """A store, disk or service cannot serve a valid request now (exit status 1)."""

    exit_code = 1


class SegtricksWarning(UserWarning):
    """Something a user should know that does not stop the command: shown as one ``warning:`` line."""


def _format_warning(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, SegtricksWarning):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def prog(module: str) -> str:
    """How the user started the command, for its usage line: the installed script
    (``segtricks-segment``) when that is what runs, else ``python -m <module>`` (argparse would say
    ``segment.py``, a file nobody typed)."""
    name = Path(sys.argv[0]).name
    return name if name.startswith("segtricks-") else f"python -m {module}"


Main = Callable[[Optional[List[str]]], int]


def command(main: Main) -> Main:
    """``main(argv) -> exit code``, with every ``SegtricksError`` printed as one ``error:`` line on
    stderr and returned as its exit code, and Ctrl-C as one line and exit code 130."""

    @functools.wraps(main)
    def wrapped(argv: Optional[List[str]] = None) -> int:
        # formatwarning, not showwarning: pytest's and other recorders replace showwarning and keep working
        warnings.formatwarning = _format_warning
        try:
            return main(argv)
        except SegtricksError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
            return INTERRUPTED
        finally:
            warnings.formatwarning = _python_format_warning

    return wrapped
