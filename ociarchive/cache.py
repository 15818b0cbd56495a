"""The piece cache: compressed pieces of earlier archives, found by what they compress"""

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

from .options import safe_filename
from .util import PHASES, mapped, write_all

# the cache of compressed pieces (where the engine offers one): its
# indexes, the folder where the engine links outputs, the names they use,
# and how large it may grow (least recently used outputs go first)
CACHE_FORMAT = "pieces-v3"
CACHE_FORMATS_BEFORE = ("pieces-v1", "pieces-v2")
CACHE_OUTPUTS = "outputs"
CACHE_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")
CACHE_KEY = re.compile(rb"[0-9a-f]{64}")
NO_KEY = "-"  # a piece found only by its place in a recorded layer (stored, not compressed)
CACHE_INDEX_MAX = 64 * 1024 * 1024
CACHE_MAX = 2 * 1024 * 1024 * 1024
CACHE_ORPHAN_AGE = 24 * 3600


class RecordedPiece(NamedTuple):
    """A piece of a blob as the cache index records it"""
    key: str  # sha256 of the uncompressed piece (NO_KEY: not computed)
    offset: int  # where the compressed piece lies in the archive
    size: int
    crc: int  # CRC32 of the compressed bytes
    prefix: str  # sha256 of the layer's tar stream from its start to this piece's end


class Chain:
    """A layer blob of an earlier archive as its pieces came, in order

    A rebuild whose layer stream begins with the same bytes (the same
    prefix digests) takes that blob's compressed pieces as they are, without
    hashing each piece on its own or compressing it; when every piece
    follows to the end, the blob's digest is known too.
    """

    def __init__(self, index: str, archive: str, pieces: List[RecordedPiece], digest: str, size: int):
        self.index = index
        self.archive = archive
        self.pieces = pieces
        self.digest = digest
        self.size = size


class PieceCache:
    """Compressed pieces of earlier images, found by the sha256 of what they compress

    Nothing is copied into the cache: the pieces stay where they were
    written, in the archives of earlier builds. The module creates
    `outputs/` in its cache folder; after a build the engine hard-links the
    committed output there, as `outputs/OUTPUT_ID/FILENAME`. Each build
    leaves an index, `pieces-v3/OUTPUT_ID.COMPRESSOR`: a line with FILENAME,
    a line `@ SIZE MTIME` (the archive's size and mtime in ns when it was
    complete), then per layer blob one line per piece in order, `KEY OFFSET SIZE CRC32
    PREFIX` (KEY the sha256 of the uncompressed piece or `-`, OFFSET and
    SIZE where the compressed piece lies in that archive, CRC32 of its
    bytes, PREFIX the sha256 of the layer's uncompressed stream up to the
    piece's end), and a line `= DIGEST SIZE` closing the blob (its sha256
    and size); the last line, `# SHA256`, is the digest of all before it (an
    index that does not match it is removed). A rebuild finds a piece by KEY, or follows a whole blob by
    PREFIX (see Chain). An archive whose size or mtime is not what its
    index says (it may share its inode with an exported file) is not
    trusted: the CRC of each of its pieces is checked before it is used; on
    a mismatch its index is removed and the piece compressed again. Indexes are
    written under a temporary name and renamed. A cache that cannot be
    written is only read; one that cannot be read is unused.
    """

    def __init__(self, path: str, compressor_argv: List[str], output: Optional[Tuple[str, str]] = None,
                 log=print):
        self.path = os.path.join(path, CACHE_FORMAT)
        self.outputs = os.path.join(path, CACHE_OUTPUTS)
        self.kind = "-".join(os.path.basename(a).lstrip("-") for a in compressor_argv)
        self.output = output  # (output id, file name) of this build, when the engine names it
        self.log = log
        self.writable = True
        self.hits = self.misses = self.damaged = 0  # pieces of this build taken from the cache or not
        self.recorded: List[bytes] = []  # this build's index lines
        self._lock = threading.Lock()
        self._used: Set[str] = set()  # indexes touched in this build
        self._dropped: Set[str] = set()  # indexes whose archive changed
        self._stamps: Dict[str, Tuple[int, int]] = {}  # (size, mtime ns) of each index's archive as written
        self._trusted: Dict[str, bool] = {}  # each index's archive is as written (decided at first use)
        self.stamp: Optional[Tuple[int, int]] = None  # this build's archive, once complete
        for folder in (self.path, self.outputs):
            os.makedirs(folder, exist_ok=True)
        for before in CACHE_FORMATS_BEFORE:
            shutil.rmtree(os.path.join(path, before), ignore_errors=True)
        self._pieces: Dict[str, Tuple[str, str, int, int, int]] = {}
        self._chains: Dict[str, List[Chain]] = {}  # by the prefix of their first piece, the newest first
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
                    lines = checked_lines(f.read(CACHE_INDEX_MAX))
                if lines is None:  # damaged, or cut short: of no use
                    os.unlink(index)
                    continue
                filename = safe_filename(os.fsdecode(lines[0]))
                archive = os.path.join(self.outputs, output_id, filename)
                if not os.path.isfile(archive):
                    # not linked yet (a build still running) or any more
                    # (its object was removed): gone after a day
                    if time.time() - os.stat(index).st_mtime > CACHE_ORPHAN_AGE:
                        os.unlink(index)
                    continue
                stamp = lines[1].split()
                if len(stamp) == 3 and stamp[0] == b"@" and stamp[1].isdigit() and stamp[2].isdigit():
                    self._stamps[index] = (int(stamp[1]), int(stamp[2]))
                self._read_index(index, archive, lines[2:])
            except (OSError, ValueError, IndexError):
                continue  # unreadable or malformed: as if absent

    def _read_index(self, index: str, archive: str, lines: List[bytes]) -> None:
        """The pieces and blobs of one index; a malformed line ends the blob it is in"""
        pieces: Optional[List[RecordedPiece]] = []
        for line in lines:
            fields = line.split()
            if len(fields) == 3 and fields[0] == b"=":
                if pieces and CACHE_KEY.fullmatch(fields[1]) and int(fields[2]) == sum(p.size for p in pieces):
                    chain = Chain(index, archive, pieces, "sha256:" + fields[1].decode(), int(fields[2]))
                    self._chains.setdefault(pieces[0].prefix, []).insert(0, chain)
                pieces = []
                continue
            piece = parse_piece(fields)
            if piece is None:
                pieces = None  # this blob cannot be followed (its other pieces are still found by key)
                continue
            if piece.key != NO_KEY:
                self._pieces[piece.key] = (index, archive, piece.offset, piece.size, piece.crc)
            if pieces is not None:
                if pieces and pieces[-1].offset + pieces[-1].size != piece.offset:
                    pieces = None  # a blob's pieces lie one after the other
                else:
                    pieces.append(piece)

    def chains(self, prefix: str) -> List[Chain]:
        """The recorded blobs whose first piece has this prefix digest, the newest first"""
        with self._lock:
            return [c for c in self._chains.get(prefix, ()) if c.index not in self._dropped]

    def follow(self, following: List[Chain], at: int, prefix: str) -> Optional[List[Chain]]:
        """The recorded blobs whose piece `at` ends where a stream's has the
        digest `prefix`, among those it followed so far (all, for the first
        piece); None when there is none: the stream is no recorded blob's"""
        if at == 0:
            return self.chains(prefix) or None
        return [c for c in following if at < len(c.pieces) and c.pieces[at].prefix == prefix] or None

    def get(self, key: str) -> Optional[Tuple[int, int, int, int]]:
        """(fd, offset, size, crc) of the compressed piece for `key`, checked; None if there is none"""
        with self._lock:
            found = self._pieces.get(key)
            if found is None or found[0] in self._dropped:
                return None
        return self._open(*found)

    def replay(self, chain: Chain, at: int) -> Optional[Tuple[int, int, int, int]]:
        """(fd, offset, size, crc) of piece `at` of a recorded blob, checked; None if its archive changed"""
        piece = chain.pieces[at]
        with self._lock:
            if chain.index in self._dropped:
                return None
        return self._open(chain.index, chain.archive, piece.offset, piece.size, piece.crc)

    def _open(self, index: str, archive: str, offset: int, size: int, crc: int) -> Optional[Tuple[int, int, int, int]]:
        """The compressed piece at `offset` of `archive`, its CRC checked"""
        started = time.perf_counter()
        fd = -1
        try:
            fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            st = os.fstat(fd)
            if size <= 0 or offset < 0 or st.st_size < offset + size:
                raise ValueError("cut short")
            trusted = self._trusted.get(index)
            if trusted is None:
                trusted = self._trusted[index] = self._stamps.get(index) == (st.st_size, st.st_mtime_ns)
            if not trusted:
                with mapped(fd, size, offset) as data:
                    if zlib.crc32(data) != crc:
                        raise ValueError("damaged")
            with self._lock:
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
        finally:
            PHASES.add("cache lookups", time.perf_counter() - started)

    def _forget(self, index: str) -> None:
        """An archive is not what its index says: none of its pieces is used again
        (counted once per archive, however many workers found it out at the same time)"""
        with self._lock:
            if index not in self._dropped:
                self._dropped.add(index)
                self.damaged += 1
        try:
            os.unlink(index)
        except OSError:
            pass

    def record(self, piece: RecordedPiece) -> None:
        """The next piece of the blob being written into this build's archive"""
        self.recorded.append(f"{piece.key} {piece.offset} {piece.size} {piece.crc} {piece.prefix}".encode())

    def end_blob(self, digest: str, size: int) -> None:
        """The blob whose pieces were recorded since the last one ended is complete"""
        self.recorded.append(f"= {digest.partition(':')[2]} {size}".encode())

    def commit(self) -> None:
        """Write this build's index (the engine links the archive it names after the build)"""
        if not self.writable or self.output is None or not self.recorded:
            return
        output_id, filename = self.output
        stamp = [f"@ {self.stamp[0]} {self.stamp[1]}".encode()] if self.stamp else [b"@ -"]
        lines = [filename.encode()] + stamp + self.recorded
        path = os.path.join(self.path, f"{output_id}.{self.kind}")
        try:
            temp_fd, temp = tempfile.mkstemp(dir=self.path, prefix=".")
            try:
                write_all(temp_fd, with_checksum(lines))
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


def parse_piece(fields: List[bytes]) -> Optional[RecordedPiece]:
    """A piece line of an index, or None when it is not one (any field out of its range)"""
    if len(fields) != 5 or not (fields[0] == NO_KEY.encode() or CACHE_KEY.fullmatch(fields[0])) \
            or not CACHE_KEY.fullmatch(fields[4]) or not all(f.isdigit() for f in fields[1:4]):
        return None
    offset, size, crc = int(fields[1]), int(fields[2]), int(fields[3])
    if size <= 0 or crc >= 1 << 32:
        return None
    return RecordedPiece(fields[0].decode(), offset, size, crc, fields[4].decode())


def with_checksum(lines: List[bytes]) -> bytes:
    """An index's text: its lines, then the sha256 of them"""
    text = b"".join(line + b"\n" for line in lines)
    return text + b"# " + hashlib.sha256(text).hexdigest().encode() + b"\n"


def checked_lines(data: bytes) -> Optional[List[bytes]]:
    """The lines of an index (without its checksum), None if the checksum does not match"""
    text, _, last = data.rstrip(b"\n").rpartition(b"\n")
    text += b"\n"
    if last != b"# " + hashlib.sha256(text).hexdigest().encode():
        return None
    return text[:-1].split(b"\n")
