"""Signals that end a build: SIGINT, SIGTERM and SIGHUP raise `Interrupted`

The command installs the handlers on its first line, so that an
interruption at any moment (while importing, validating, building or
exporting) unwinds through the same cleanup as an error and the command
exits with 128 + the signal's number. While that cleanup runs, further
signals are ignored, so that it finishes.
"""

import signal
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


_raised = False


def _handler(signum: int, frame: Any) -> None:  # pylint: disable=unused-argument
    global _raised  # pylint: disable=global-statement  # one process, one interruption
    if _raised:
        return  # the first one is being handled: let its cleanup finish
    _raised = True
    raise Interrupted(signum)


def install() -> None:
    for signum in SIGNALS:
        signal.signal(signum, _handler)
