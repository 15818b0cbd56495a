"""The outer archive: the tar of the OCI layout, blobs streamed in behind reserved headers"""

import os
import tarfile
import threading
from typing import Tuple

from .layout import blob_path
from .tarstream import padding, tar_member
from .util import CHUNK, Digest, hash_fd, write_all

# the first 1536 bytes of the archive are kept free while the layer streams
# in behind them; they later hold the layer's tar header (one ustar block,
# or three when the size needs a pax record) preceded by directory entries
RESERVED = 3 * tarfile.BLOCKSIZE
# the blob written is flushed to disk in the background every SYNC_EVERY bytes
SYNC_EVERY = 64 * 1024 * 1024


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


class BlobWriter:
    """Writes the layer blob into the archive, hashing it

    A background thread flushes what was written every SYNC_EVERY bytes, so
    the disk works while the layer is made and the final fsync is short.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.digest = Digest()
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
        self.digest = Digest()

    def end(self, mtime: int) -> Tuple[str, int]:
        """Finish the blob begun last: pad it, write its header; (digest, size)"""
        blob_digest, size = self.digest.digest, self.digest.size
        write_all(self.fd, padding(size))
        os.pwrite(self.fd, blob_prefix(blob_path(blob_digest), size, mtime, first=self.count == 0), self._start)
        self.count += 1
        return blob_digest, size

    def write(self, data: bytes) -> None:
        write_all(self.fd, data)
        self.digest.update(data)
        self._account(len(data))

    def write_fd(self, fd: int, size: int, start: int = 0, hashed: bool = False) -> int:
        """Append `size` bytes of file `fd` from offset `start`, copied by
        the kernel (`hashed`: already in the digest); returns where in the
        archive they went"""
        where = os.lseek(self.fd, 0, os.SEEK_CUR)
        if not hashed:
            hash_fd(self.digest, fd, size, start)
        offset, end = start, start + size
        while offset < end:
            try:
                sent = os.sendfile(self.fd, fd, offset, end - offset)
            except OSError:
                sent = os.write(self.fd, os.pread(fd, min(CHUNK, end - offset), offset))
            if sent == 0:
                raise RuntimeError("write layer: short write")
            offset += sent
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
