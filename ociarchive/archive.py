"""The outer archive: the tar of the OCI layout, blobs streamed in behind reserved headers"""

import contextlib
import fcntl
import os
import queue
import tarfile
import threading
import time
from typing import Any, List, Optional, Tuple

from .layout import blob_path
from .tarstream import padding, tar_member
from .util import CHUNK, PHASES, Digest, hash_fd, write_all

# the first 1536 bytes of the archive are kept free while the layer streams
# in behind them; they later hold the layer's tar header (one ustar block,
# or three when the size needs a pax record) preceded by directory entries
RESERVED = 3 * tarfile.BLOCKSIZE
# the blob written is flushed to disk in the background every SYNC_EVERY bytes
SYNC_EVERY = 8 * 1024 * 1024


def layer_prefix(blob_name: str, size: int, mtime: int) -> bytes:
    """Exactly RESERVED bytes: directory entries, then the layer's header"""
    header = tar_member(blob_name, size, mtime)
    dirs = [tar_member("blobs/", 0, mtime, True), tar_member("blobs/sha256/", 0, mtime, True)]
    filler = b""
    while dirs and len(filler) + len(header) < RESERVED:
        filler += dirs.pop(0)
    prefix = filler + header
    if len(prefix) != RESERVED:
        raise RuntimeError(f"layer tar header of {len(header)} bytes does not fit the reserved space")
    return prefix


def blob_prefix(blob_name: str, size: int, mtime: int, first: bool) -> bytes:
    """Exactly RESERVED bytes before a layer blob in the archive

    The first holds the blobs/ directories too (layer_prefix); a later one is
    its member header made to the same size by a pax comment record.
    """
    if first:
        return layer_prefix(blob_name, size, mtime)
    header = tar_member(blob_name, size, mtime, pax={"comment": "osbuild oci-archive layer"})
    if len(header) != RESERVED:
        raise RuntimeError(f"layer tar header of {len(header)} bytes does not fit the reserved space")
    return header


class Behind:
    """A thread hashing what was written, in order, behind the writer

    Takes (fd, offset, size) ranges of files that stay as they are until
    `finish` (bytes too); the writer never waits for the hash."""

    def __init__(self, digest: Digest) -> None:
        self.digest = digest
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="blob-hash", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        self._work.put(item)

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            if self._error is not None:
                continue  # only drained: finish() reports it
            try:
                if isinstance(item, tuple):
                    hash_fd(self.digest, item[0], item[2], item[1])
                else:
                    self.digest.update(item)
            except BaseException as e:  # pylint: disable=broad-except  # raised by finish() in the writer
                self._error = e

    def finish(self) -> None:
        """Wait until everything put is hashed (its error raised here)"""
        self._work.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class Trail:
    """The sha256 of a blob made of pieces, put off while they are those of a recorded blob

    Pieces that continue a recorded blob (a cache.Chain) in order are not
    hashed as they pass: when the blob ends with that blob's last piece,
    it is that blob and its digest is known. At the first piece that does
    not follow, the pieces so far and every one after are hashed where
    they were written, by a thread behind the writer (Behind). A trail
    that is not put off (the written bytes cannot be read back) hashes
    each piece as it comes.
    """

    def __init__(self, deferred: bool = True) -> None:
        self.digest = Digest()
        self.size = 0
        self._chain: Any = None  # the recorded blob followed so far
        self._next = 0
        self._eager = not deferred
        self._unhashed: List[Tuple[int, int, int]] = []  # (fd, offset, size) written, not hashed yet
        self._behind: Optional[Behind] = None

    def add(self, source: Tuple[int, int], size: int, written: Tuple[int, int],
            chain: Optional[Tuple[Any, int]] = None) -> None:
        """The blob's next `size` bytes: at `source` (fd, offset), and copied
        to `written` (fd, offset; it stays open until the blob ends); `chain`
        (Chain, at) when they are that piece of it"""
        self.size += size
        if not self._eager and chain is not None and chain[1] == self._next \
                and (self._chain is None or chain[0] is self._chain):
            self._chain = chain[0]
            self._next += 1
            self._unhashed.append((*written, size))
            return
        if not self._eager:
            self._unhashed.append((*written, size))
            self.catch_up()
        elif self._behind is not None:
            self._behind.put((*written, size))
        else:
            hash_fd(self.digest, source[0], size, source[1])

    def update(self, data: Any) -> None:
        """The blob's next bytes"""
        self.size += len(data)
        if self._behind is None and not self._unhashed:
            self._eager = True  # nothing was put off: hashed here, as they come
            self.digest.update(data)
            return
        self.catch_up()
        assert self._behind is not None
        self._behind.put(bytes(data))

    def catch_up(self) -> None:
        """Hash what was put off, behind the writer; from now on every piece is"""
        if self._eager:
            return
        self._eager = True
        self._behind = Behind(self.digest)
        for item in self._unhashed:
            self._behind.put(item)
        self._unhashed = []

    def result(self) -> Tuple[str, int]:
        """(digest, size) of the blob"""
        chain = self._chain
        if not self._eager and chain is not None and self._next == len(chain.pieces) and self.size == chain.size:
            return chain.digest, chain.size
        self.catch_up()
        self.abandon()
        return self.digest.digest, self.digest.size

    def abandon(self) -> None:
        """Stop the thread behind, once what it was given is hashed (a failed build's cleanup too)"""
        behind, self._behind = self._behind, None
        if behind is not None:
            behind.finish()


class BlobWriter:
    """Writes the layer blob into the archive, hashing it

    A background thread flushes what was written every SYNC_EVERY bytes, so
    the disk works while the layer is made and the final fsync is short.
    """

    def __init__(self, fd: int):
        self.fd = fd
        # a put-off digest reads the blob back: only where the archive is open for reading too
        self.readable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        self.trail = Trail(self.readable)
        self.count = 0
        self._start = 0
        self._unsynced = 0
        self._kick = threading.Event()
        self._done = False
        self._syncer = threading.Thread(target=self._sync_loop, name="layer-sync", daemon=True)
        self._syncer.start()

    def begin(self) -> None:
        """Start a blob at the current offset, leaving room for its header"""
        self._start = os.lseek(self.fd, 0, os.SEEK_CUR)
        os.lseek(self.fd, RESERVED, os.SEEK_CUR)
        self.trail = Trail(self.readable)

    def end(self, mtime: int, trail: Optional[Trail] = None) -> Tuple[str, int]:
        """Finish the blob begun last (whose digest `trail` has, if not this
        writer's): pad it, write its header; (digest, size)"""
        blob_digest, size = (trail or self.trail).result()
        write_all(self.fd, padding(size))
        os.pwrite(self.fd, blob_prefix(blob_path(blob_digest), size, mtime, first=self.count == 0), self._start)
        self.count += 1
        return blob_digest, size

    def write(self, data: bytes) -> None:
        started = time.perf_counter()
        write_all(self.fd, data)
        PHASES.add("writing", time.perf_counter() - started)
        self.trail.update(data)
        self._account(len(data))

    def write_fd(self, fd: int, size: int, start: int = 0, *, hashed: bool = False,
                 chain: Optional[Tuple[Any, int]] = None) -> int:
        """Append `size` bytes of file `fd` from offset `start`, copied by
        the kernel (`hashed`: another trail has them; `chain`: they are that
        piece of a recorded blob); returns where in the archive they went"""
        started = time.perf_counter()
        where = os.lseek(self.fd, 0, os.SEEK_CUR)
        offset, end = start, start + size
        while offset < end:
            try:
                sent = os.sendfile(self.fd, fd, offset, end - offset)
            except OSError:
                sent = os.write(self.fd, os.pread(fd, min(CHUNK, end - offset), offset))
            if sent == 0:
                raise RuntimeError("write layer: short write")
            offset += sent
        PHASES.add("writing", time.perf_counter() - started)
        if not hashed:
            self.trail.add((fd, start), size, (self.fd, where), chain)
        self._account(size)
        return where

    def _account(self, size: int) -> None:
        self._unsynced += size
        if self._unsynced >= SYNC_EVERY:
            self._unsynced = 0
            self._kick.set()

    def _sync_loop(self) -> None:
        while True:
            self._kick.wait()
            self._kick.clear()
            if self._done:
                return
            try:
                os.fdatasync(self.fd)
            except OSError:
                return  # the final fsync reports the error

    def close(self) -> None:
        self._done = True
        self._kick.set()
        self._syncer.join()
        with contextlib.suppress(Exception):  # a failed build: its digest is moot
            self.trail.abandon()
