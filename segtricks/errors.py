"""The errors a user can act on, and how every command turns them into one line and an exit code.

Every error segtricks raises on purpose derives from ``SegtricksError``; its message is one line that
names the file, flag or service at fault and the fix. Two kinds, by exit code:

- ``BadInput`` (exit 2): what the user typed or wrote is wrong: a flag, a config, grid or study file,
  a name, a dataset folder, a weights file. Changing the command or its files fixes it.
- ``Unavailable`` (exit 1): the input is fine but the machine or a service cannot serve it now: the
  tracking store, a full disk, the Slurm controller. Retrying once that is fixed works.

``command`` wraps a command's ``main``: a ``SegtricksError`` prints ``error: <message>`` and returns
its exit code; anything else is a bug and keeps its traceback (it is never reported as a user error).
Torch-free: every command imports this before anything heavy.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, List, Optional


class SegtricksError(Exception):
    """Base of the errors a user can act on; ``exit_code`` is what a command returns for it."""

    exit_code = 1


class BadInput(SegtricksError):
    """The command's flags or files are wrong (exit status 2)."""

    exit_code = 2


class Unavailable(SegtricksError):
    """A store, disk or service cannot serve a valid request now (exit status 1)."""

    exit_code = 1


Main = Callable[[Optional[List[str]]], int]


def command(main: Main) -> Main:
    """``main(argv) -> exit code``, with every ``SegtricksError`` printed as one ``error:`` line on
    stderr and returned as its exit code."""

    @functools.wraps(main)
    def wrapped(argv: Optional[List[str]] = None) -> int:
        try:
            return main(argv)
        except SegtricksError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code

    return wrapped
