"""Signals that end a build: SIGINT, SIGTERM and SIGHUP raise `Interrupted`

The command installs the handlers on its first line, so that an
interruption at any moment (while importing, validating, building or
exporting) unwinds through the same cleanup as an error and the command
exits with 128 + the signal's number. While that cleanup runs, further
signals are ignored, so that it finishes.
"""

import os
import signal
import sys
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal asked the build to stop"""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


_STATE = {"raised": False}


def _handler(signum: int, frame: Any) -> None:  # pylint: disable=unused-argument
    if _STATE["raised"]:
        return  # the first one is being handled: let its cleanup finish
    _STATE["raised"] = True
    raise Interrupted(signum)


def install() -> None:
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def report(error: Interrupted, prog: str = "osbuild") -> int:
    """Say that the build was interrupted; the exit status for it"""
    print(f"\n{prog}: interrupted ({error.name}), nothing was kept of the unfinished work", file=sys.stderr)
    return error.exit_status


def reader_gone() -> int:
    """stdout's reader went away (`osbuild --inspect | head`): the rest of
    the output goes nowhere, quietly; the exit status is SIGPIPE's"""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE
