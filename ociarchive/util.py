"""Small helpers of the data path: digests, writes, pipes, files without names, sizes for the log"""

import contextlib
import fcntl
import hashlib
import mmap
import os
import subprocess
import tempfile
import threading
import time
from typing import BinaryIO, Dict, Iterator, Optional

# how much one read of a pipe or file takes
CHUNK = 1024 * 1024
F_SETPIPE_SZ = 1031
# seconds between two progress lines of a long layer
PROGRESS_INTERVAL = 5.0


class Phases:
    """Seconds spent in each phase of making an archive, summed over the
    threads that work in it (so they may add up to more than the wall time)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: Dict[str, float] = {}

    def reset(self) -> None:
        with self._lock:
            self.seconds = {}

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def report(self) -> Dict[str, float]:
        with self._lock:
            return {phase: round(seconds, 3) for phase, seconds in sorted(self.seconds.items())}


# the phases of the archive being made (one at a time in a process)
PHASES = Phases()


class Digest:
    """sha256 and length of what passed"""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def update(self, data) -> None:
        started = time.perf_counter()
        self.hash.update(data)
        self.size += len(data)
        PHASES.add("hashing", time.perf_counter() - started)

    def prefix(self) -> str:
        """The sha256 of what passed so far, as hex (more may follow)"""
        return self.hash.copy().hexdigest()

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def unnamed_file(directory: Optional[str]) -> int:
    """A file in `directory` without a name: nothing is left of it when it is closed"""
    directory = directory or tempfile.gettempdir()
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):
        with tempfile.TemporaryFile(dir=directory) as f:
            return os.dup(f.fileno())


def anonymous_file(name: str) -> int:
    """A file in memory, gone when closed"""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name, os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())


@contextlib.contextmanager
def mapped(fd: int, size: int, start: int = 0) -> Iterator[memoryview]:
    """`size` bytes of file `fd` from offset `start`, mapped read-only (no copy)

    The mapping starts at the page boundary below `start`, as mmap needs;
    the view is of exactly the bytes asked for (empty for none)."""
    if not size:
        yield memoryview(b"")
        return
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with mmap.mmap(fd, start + size - base, prot=mmap.PROT_READ, offset=base) as view:
        with memoryview(view) as whole:
            with whole[start - base:] as data:
                yield data


def hash_fd(digest: Digest, fd: int, size: int, start: int = 0) -> None:
    """Hash `size` bytes of file `fd` from offset `start` without copying them"""
    with mapped(fd, size, start) as data:
        digest.update(data)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def bigger_pipe(stream: Optional[BinaryIO]) -> None:
    """Raise a pipe's buffer to 1 MiB where the kernel lets us (fewer wakeups)"""
    if stream is None:
        return
    try:
        fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass  # the default 64 KiB works, only slower


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


def check_exit(proc: subprocess.Popen, cause: Optional[BaseException] = None) -> None:
    if proc.wait() != 0:
        raise RuntimeError(f"create layer: {proc.args[0]} exited with status {proc.returncode}") from cause


def describe_error(error: BaseException) -> str:
    """One line for the log: an OSError's reason and path in words, not its repr"""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror[:1].lower() + error.strerror[1:]
        return f"{reason}: {error.filename}" if error.filename else reason
    return str(error)
