"""The piece cache: compressed pieces of earlier archives, found by what they compress"""

import contextlib
import mmap
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from typing import Any, Dict, List, Optional, Set, Tuple

from .options import safe_filename
from .util import write_all

# the cache of compressed pieces (where the engine offers one): its
# indexes, the folder where the engine links outputs, the names they use,
# and how large it may grow (least recently used outputs go first)
CACHE_FORMAT = "pieces-v2"
CACHE_OUTPUTS = "outputs"
CACHE_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")
CACHE_KEY = re.compile(rb"[0-9a-f]{64}")
CACHE_INDEX_MAX = 64 * 1024 * 1024
CACHE_MAX = 2 * 1024 * 1024 * 1024
CACHE_ORPHAN_AGE = 24 * 3600


class PieceCache:
    """Compressed pieces of earlier images, found by the sha256 of what they compress

    Nothing is copied into the cache: the pieces stay where they were
    written, in the archives of earlier builds. The module creates
    `outputs/` in its cache folder; after a build the engine hard-links the
    committed output there, as `outputs/OUTPUT_ID/FILENAME`. Each build
    leaves an index, `pieces-v2/OUTPUT_ID.COMPRESSOR`: a line with FILENAME,
    then one line per piece, `KEY OFFSET SIZE CRC32` (KEY the sha256 of the
    uncompressed piece, OFFSET and SIZE where the compressed piece lies in
    that archive, CRC32 of its bytes). A reader checks the CRC before it
    uses a piece: an archive changed or cut since (it may share its inode
    with an exported file) has its index removed, the piece is compressed
    again. Indexes are written under a temporary name and renamed. A cache
    that cannot be written is only read; one that cannot be read is unused.
    """

    def __init__(self, path: str, compressor_argv: List[str], output: Optional[Tuple[str, str]] = None,
                 log=print):
        self.path = os.path.join(path, CACHE_FORMAT)
        self.outputs = os.path.join(path, CACHE_OUTPUTS)
        self.kind = "-".join(os.path.basename(a).lstrip("-") for a in compressor_argv)
        self.output = output  # (output id, file name) of this build, when the engine names it
        self.log = log
        self.writable = True
        self.hits = self.misses = self.damaged = 0
        self.recorded: List[Tuple[str, int, int, int]] = []
        self._lock = threading.Lock()
        self._used: Set[str] = set()  # indexes touched in this build
        for folder in (self.path, self.outputs):
            os.makedirs(folder, exist_ok=True)
        shutil.rmtree(os.path.join(path, "pieces-v1"), ignore_errors=True)  # the format before
        self._pieces: Dict[str, Tuple[str, str, int, int, int]] = {}
        self._load()

    def _load(self) -> None:
        """Read every index of this compressor, the newest last (it wins)"""
        suffix = "." + self.kind
        indexes = []
        for name in os.listdir(self.path):
            output_id = name[:-len(suffix)]
            if name.endswith(suffix) and CACHE_ID.fullmatch(output_id):
                try:
                    indexes.append((os.stat(os.path.join(self.path, name)).st_mtime, name, output_id))
                except OSError:
                    continue
        for _, name, output_id in sorted(indexes):
            index = os.path.join(self.path, name)
            try:
                with open(index, "rb") as f:
                    lines = f.read(CACHE_INDEX_MAX).split(b"\n")
                filename = safe_filename(os.fsdecode(lines[0]))
                archive = os.path.join(self.outputs, output_id, filename)
                if not os.path.isfile(archive):
                    # not linked yet (a build still running) or any more
                    # (its object was removed): gone after a day
                    if time.time() - os.stat(index).st_mtime > CACHE_ORPHAN_AGE:
                        os.unlink(index)
                    continue
                for line in lines[1:]:
                    fields = line.split()
                    if len(fields) == 4 and CACHE_KEY.fullmatch(fields[0]):
                        key = fields[0].decode()
                        self._pieces[key] = (index, archive, int(fields[1]), int(fields[2]), int(fields[3]))
            except (OSError, ValueError, IndexError):
                continue  # unreadable or malformed: as if absent

    def get(self, key: str) -> Optional[Tuple[int, int, int, int]]:
        """(fd, offset, size, crc) of the compressed piece for `key`, checked; None if there is none"""
        with self._lock:
            found = self._pieces.get(key)
            if found is None:
                self.misses += 1
                return None
        index, archive, offset, size, crc = found
        fd = -1
        try:
            fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            if size <= 0 or offset < 0 or os.fstat(fd).st_size < offset + size:
                raise ValueError("cut short")
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            with mmap.mmap(fd, size + offset - start, prot=mmap.PROT_READ, offset=start) as view:
                with memoryview(view) as data:
                    if zlib.crc32(data[offset - start:]) != crc:
                        raise ValueError("damaged")
            with self._lock:
                self.hits += 1
                touch = index not in self._used
                self._used.add(index)
            if touch:
                with contextlib.suppress(OSError):
                    os.utime(index)  # recently used: kept longest
            return fd, offset, size, crc
        except (OSError, ValueError):
            if fd >= 0:
                os.close(fd)
            self._forget(index)
            return None

    def _forget(self, index: str) -> None:
        """An archive is not what its index says: none of its pieces is used again
        (counted once per archive, however many workers found it out at the same time)"""
        with self._lock:
            self.misses += 1
            kept = {k: v for k, v in self._pieces.items() if v[0] != index}
            if len(kept) < len(self._pieces):
                self.damaged += 1
            self._pieces = kept
        try:
            os.unlink(index)
        except OSError:
            pass

    def record(self, key: str, offset: int, size: int, crc: int) -> None:
        """A piece of this build's archive: where it lies in the file"""
        self.recorded.append((key, offset, size, crc))

    def commit(self) -> None:
        """Write this build's index (the engine links the archive it names after the build)"""
        if not self.writable or self.output is None or not self.recorded:
            return
        output_id, filename = self.output
        lines = [filename.encode()] + [f"{k} {o} {s} {c}".encode() for k, o, s, c in self.recorded]
        path = os.path.join(self.path, f"{output_id}.{self.kind}")
        try:
            temp_fd, temp = tempfile.mkstemp(dir=self.path, prefix=".")
            try:
                write_all(temp_fd, b"\n".join(lines) + b"\n")
            finally:
                os.close(temp_fd)
            os.replace(temp, path)
        except OSError as e:
            self.writable = False
            self.log(f"oci-archive: cache index not written ({e.strerror}): pieces are only reused")

    def trim(self, limit: int = CACHE_MAX) -> int:
        """Remove the least recently used outputs (and their indexes) until
        the cache holds at most `limit` bytes; this build's stays"""
        units: Dict[str, List[Any]] = {}  # output id -> [last used, bytes, paths]
        keep = self.output[0] if self.output else None

        def add(output_id: str, path: str, st: os.stat_result) -> None:
            unit = units.setdefault(output_id, [0.0, 0, []])
            unit[0] = max(unit[0], st.st_mtime)
            unit[1] += st.st_blocks * 512
            unit[2].append(path)

        for name in os.listdir(self.path):
            if not name.startswith("."):  # a temporary one: a build is writing it
                path = os.path.join(self.path, name)
                with contextlib.suppress(OSError):
                    add(name.split(".", 1)[0], path, os.lstat(path))
        for output_id in os.listdir(self.outputs):
            folder = os.path.join(self.outputs, output_id)
            with contextlib.suppress(OSError):
                for name in os.listdir(folder):
                    add(output_id, folder, os.lstat(os.path.join(folder, name)))
        total = sum(unit[1] for unit in units.values())
        removed = 0
        for output_id, (_, size, paths) in sorted(units.items(), key=lambda item: item[1][0]):
            if total <= limit:
                break
            if output_id == keep:
                continue
            for path in set(paths):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            total -= size
            removed += 1
        return removed
