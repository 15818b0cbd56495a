"""Progress and logs of a build, for people (LogMonitor) or nobody (NullMonitor)"""

import sys
import time
from typing import Any, Dict, Optional, TextIO


class BaseMonitor:
    """Receives the events of a build; does nothing with them"""

    def begin(self, pipeline_id: str, what: str) -> None:
        """A pipeline starts"""

    def stage(self, name: str, stage_id: str) -> None:
        """A stage (or assembler) starts"""

    def log(self, text: str) -> None:
        """Output of the running stage, or a message of osbuild"""

    def result(self, result: Dict[str, Any]) -> None:
        """The running stage ended with this result"""

    def cached(self, what: str, object_id: str) -> None:
        """Something was found in the store and not built"""


class NullMonitor(BaseMonitor):
    """Reports nothing"""


class LogMonitor(BaseMonitor):
    """A human log: stage names, ids, live output, durations"""

    def __init__(self, stream: Optional[TextIO] = None):
        self.out = stream or sys.stdout
        self.started = 0.0
        self.color = self.out.isatty()

    def _bold(self, text: str) -> str:
        return f"\033[1m{text}\033[0m" if self.color else text

    def begin(self, pipeline_id: str, what: str) -> None:
        self.out.write(self._bold(f"Pipeline {what}: {pipeline_id}") + "\n")
        self.out.flush()

    def stage(self, name: str, stage_id: str) -> None:
        self.started = time.monotonic()
        self.out.write(self._bold(f"{name}: {stage_id}") + "\n")
        self.out.flush()

    def log(self, text: str) -> None:
        self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()

    def result(self, result: Dict[str, Any]) -> None:
        duration = result.get("duration", time.monotonic() - self.started)
        state = "done" if result.get("success") else "FAILED"
        self.out.write(f"{result.get('name')}: {state} in {duration:.2f} s\n\n")
        self.out.flush()

    def cached(self, what: str, object_id: str) -> None:
        self.out.write(f"{what} {object_id}: found in the store, not rebuilt\n")
        self.out.flush()
