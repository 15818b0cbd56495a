"""GNU tar's stream of a tree: the tar command, and reading its headers where they lie"""

import collections
import os
import tarfile
import time
from typing import Any, Deque, Dict, List, Optional, Tuple

from .util import CHUNK

# extended attributes that belong in an image; everything else (the host's
# SELinux labels, trusted.*, ...) stays out of the layer
LAYER_XATTRS = ["user.*", "security.capability", "security.ima"]

# tar's stream is read in blocks of READ_BUFFER
READ_BUFFER = 2 * 1024 * 1024
ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)
END_OF_ARCHIVE = bytes(2 * tarfile.BLOCKSIZE)


def octal_field(field: Any) -> int:
    """A number field of a tar header (octal digits, or base-256 when its first byte has the high bit)"""
    if field[0] & 0x80:
        return int.from_bytes(bytes(field[1:]), "big")
    return int(bytes(field).strip(b" \0") or b"0", 8)


def pax_records(data: bytes) -> List[Tuple[bytes, bytes]]:
    """The (key, record) pairs of a pax extended header's data, in order"""
    records = []
    at = 0
    while at < len(data):
        space = data.index(b" ", at)
        end = at + int(data[at:space])
        record = data[at:end]
        records.append((record[space - at + 1:].partition(b"=")[0], record))
        at = end
    return records


def with_mtime(header: bytes, mtime: int, size: Optional[int] = None) -> bytes:
    """A ustar header with another mtime (and size), its checksum made again"""
    block = bytearray(header)
    block[136:148] = b"%011o\0" % mtime
    if size is not None:
        block[124:136] = b"%011o\0" % size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def repeated_header(raw: bytes, mtime: int) -> bytes:
    """A directory's entry (its pax header included) as a lower layer
    repeats it: all the same (mode, owner, xattrs) but the mtime"""
    block = tarfile.BLOCKSIZE
    header = raw[-block:]
    out = b""
    if len(raw) > block and raw[156:157] == b"x":
        size = octal_field(raw[124:136])
        data = b"".join(record for key, record in pax_records(raw[block:block + size]) if key != b"mtime")
        if data:
            out = with_mtime(raw[:block], mtime, len(data)) + data + padding(len(data))
    return out + with_mtime(header, mtime)


# --- subprocess argument lists (pure) ---------------------------------------

def layer_tar_argv(tree: str, source_epoch: Optional[int]) -> List[str]:
    """GNU tar writing the layer of `tree` to stdout, reproducibly"""
    argv = [
        "tar",
        "--create",
        "--file=-",
        f"--directory={tree}",
        "--format=posix",
        # a fixed extended header name: the default one holds tar's PID
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "--sort=name",
        "--numeric-owner",
        "--sparse",
        # the default format (1.0) names a sparse file's entry after tar's
        # process id; 0.0 keeps the name (Go's archive/tar, libarchive and
        # Python's tarfile read it)
        "--sparse-version=0.0",
        "--xattrs",
        *[f"--xattrs-include={pattern}" for pattern in LAYER_XATTRS],
        "--no-selinux",
        "--no-acls",
    ]
    if source_epoch is not None:
        argv += [f"--mtime=@{source_epoch}", "--clamp-mtime"]
    # "." keeps the metadata of the root directory and makes an empty tree a
    # valid archive holding just "./"
    return [*argv, "."]


def tar_member(name: str, size: int, mtime: int, directory: bool = False,
               pax: Optional[Dict[str, str]] = None, *, errors: str = "strict") -> bytes:
    """A tar header (pax where needed, or with the `pax` records) for a member owned by 0:0, mode
    0644 (0755 for a directory); `errors` for names that are not UTF-8"""
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mtime = mtime
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.pax_headers = dict(pax or {})
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors=errors)


def padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


class TarReader:
    """A tar stream from a pipe, read in large blocks; entries are looked at
    where they lie in the buffer"""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray(READ_BUFFER)
        self.view = memoryview(self.buf)
        self.lo = 0  # the first byte not consumed
        self.hi = 0  # the end of what was read
        self.base = 0  # where the buffer's first byte is in the stream
        self.ahead: Deque[bytes] = collections.deque()  # read before the buffer takes it
        self.ahead_size = 0
        self.ended = False
        self.seconds = 0.0  # in reads of the pipe (waiting for tar included)

    def read_ahead(self, limit: int) -> bool:
        """Read one more block of the stream into memory; False at its end or at `limit` bytes read ahead"""
        if self.ended or self.ahead_size >= limit:
            return False
        started = time.perf_counter()
        data = os.read(self.fd, CHUNK)
        self.seconds += time.perf_counter() - started
        if not data:
            self.ended = True
            return False
        self.ahead.append(data)
        self.ahead_size += len(data)
        return True

    def need(self, n: int) -> bool:
        """At least `n` bytes from lo on in the buffer; False if the stream ends first"""
        if self.hi - self.lo >= n:
            return True
        if self.lo + n > len(self.buf):
            keep = self.hi - self.lo
            if n > len(self.buf):  # a pax header larger than the buffer
                buf = bytearray(max(n, 2 * len(self.buf)))
                buf[:keep] = self.view[self.lo:self.hi]
                self.buf, self.view = buf, memoryview(buf)
            else:
                self.buf[:keep] = self.view[self.lo:self.hi].tobytes()
            self.base += self.lo
            self.lo, self.hi = 0, keep
        while self.hi - self.lo < n:
            if self.ahead:
                data = self.ahead.popleft()
                room = len(self.buf) - self.hi
                if len(data) > room:
                    self.ahead.appendleft(data[room:])
                    data = data[:room]
                self.view[self.hi:self.hi + len(data)] = data
                self.hi += len(data)
                self.ahead_size -= len(data)
                continue
            started = time.perf_counter()
            got = os.readv(self.fd, [self.view[self.hi:]])
            self.seconds += time.perf_counter() - started
            if got == 0:
                return False
            self.hi += got
        return True

    @property
    def offset(self) -> int:
        """Where lo is in the stream"""
        return self.base + self.lo

    def skip(self, n: int) -> None:
        self.lo += n

    def drain(self) -> None:
        """Read what follows the end-of-archive blocks (tar pads to a record) so tar ends well"""
        while os.read(self.fd, CHUNK):
            pass

    def rest(self) -> bytes:
        """All the stream from lo on: the end-of-archive blocks and tar's padding"""
        rest = [self.view[self.lo:self.hi].tobytes(), *self.ahead]
        self.lo = self.hi
        self.ahead.clear()
        while data := os.read(self.fd, CHUNK):
            rest.append(data)
        return b"".join(rest)


def ustar_name(header: bytes, field: int = 0) -> bytes:
    """The name (or, with field 157, the link name) in a ustar header"""
    name = header[field:field + 100].split(b"\0", 1)[0]
    if field == 0 and header[345]:
        return header[345:500].split(b"\0", 1)[0] + b"/" + name
    return name


def pax_entry(pax: bytes, size: int) -> Tuple[Optional[bytes], Optional[bytes], int]:
    """(path, linkpath, size) that pax records give an entry (None, None, `size` where they do not)"""
    name = link = None
    for key, record in pax_records(pax):
        if key in (b"path", b"linkpath", b"size"):
            value = record[record.index(b"=") + 1:-1]
            if key == b"path":
                name = value
            elif key == b"linkpath":
                link = value
            else:
                size = int(value)
    return name, link, size


def tree_key(name: bytes) -> bytes:
    """b"usr/bin/ls" of the entry name b"./usr/bin/ls" (b"" for the root)"""
    key = (name[2:] if name[:2] == b"./" else name.lstrip(b"/")).rstrip(b"/")
    return b"" if key == b"." else key
