"""Pieces of layers compressed on every core, and where they wait until their blob is written"""

import concurrent.futures
import contextlib
import hashlib
import mmap
import os
import queue
import subprocess
import threading
import time
import zlib
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

from .archive import BlobWriter, Trail
from .cache import NO_KEY, Chain, PieceCache, RecordedPiece
from .compress import incompressible
from .deflate import for_argv as deflate_for
from .util import PHASES, PROGRESS_INTERVAL, Digest, anonymous_file, human, mapped, unnamed_file, write_all


class Packed(NamedTuple):
    """A compressed piece, ready to be written"""
    fd: int
    offset: int
    size: int
    key: str  # for the cache index: the sha256 of the uncompressed piece, or NO_KEY
    crc: int  # CRC32 of the compressed bytes (0 without a cache)
    made: bool  # in a file of the pool (else opened from the cache: closed after use)
    prefix: str  # the sha256 of the layer's stream up to the piece's end ("" without a cache)
    chain: Optional[Tuple[Chain, int]]  # the piece of a recorded blob it is (cache.Chain, index)


@contextlib.contextmanager
def piece_buffer(raw: Any, size: int) -> Iterator[Any]:
    """A piece's bytes in one buffer that C code may read: its file mapped
    privately (no copy is made until someone writes), or its buffers as
    one (joined where there are several)"""
    if isinstance(raw, int):
        if not size:
            yield b""
            return
        with mmap.mmap(raw, size, access=mmap.ACCESS_COPY) as view:
            yield view
    elif len(raw) == 1 and isinstance(raw[0], (bytes, bytearray)):
        yield raw[0]
    else:
        yield b"".join(raw)


class FilePool:
    """Anonymous files used again: a new one costs fresh pages the kernel
    must zero and map, some 0.5 s per GiB of layer on a small machine"""

    def __init__(self, name: str, keep: int):
        self.name = name
        self.keep = keep
        self._free: List[int] = []
        self._lock = threading.Lock()

    def take(self) -> int:
        """An anonymous file, its offset at 0 (it may hold old bytes beyond what is written)"""
        with self._lock:
            fd = self._free.pop() if self._free else -1
        if fd < 0:
            return anonymous_file(self.name)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def give(self, fd: int) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(fd)
                return
        os.close(fd)

    def close(self) -> None:
        with self._lock:
            for fd in self._free:
                os.close(fd)
            self._free = []


class Spill:
    """Compressed pieces of the layers whose blobs cannot be written yet:
    an unnamed file beside the archive (gone when closed, whatever happens)"""

    def __init__(self, directory: Optional[str]):
        self.directory = directory
        self.fd = -1
        self.size = 0
        self._pieces: Dict[int, List[Tuple[int, Packed]]] = {}
        self._trails: Dict[int, Trail] = {}  # the digest of each layer's blob so far

    def add(self, index: int, piece: Packed) -> int:
        """Keep a copy of a compressed piece of layer `index`; its size"""
        if self.fd < 0:
            self.fd = unnamed_file(self.directory)
        started = time.perf_counter()
        done = 0
        while done < piece.size:
            sent = os.sendfile(self.fd, piece.fd, piece.offset + done, piece.size - done)
            if sent == 0:
                raise RuntimeError("create layer: short write of a piece")
            done += sent
        PHASES.add("writing", time.perf_counter() - started)
        self._trails.setdefault(index, Trail()).add((piece.fd, piece.offset), piece.size, (self.fd, self.size),
                                                    piece.chain)
        self._pieces.setdefault(index, []).append((self.size, piece))
        self.size += piece.size
        return piece.size

    def pieces(self, index: int) -> Tuple[List[Tuple[int, Packed]], Trail]:
        """The pieces of layer `index` in order, each with where it lies in
        the spill file, and the digest of them all"""
        return self._pieces.pop(index, []), self._trails.pop(index, Trail())

    def close(self) -> None:
        for trail in self._trails.values():
            with contextlib.suppress(Exception):  # a failed build: the digests are moot
                trail.abandon()
        self._trails = {}
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ChunkedLayers:
    """The consuming half of SplitLayers: pieces compressed on all cores, blobs into the archive

    A producer thread (SplitLayers) hands over pieces of the layers' tar
    streams in anonymous files; each goes to a worker, whose compressed
    piece comes back in another anonymous file (or from the piece cache).
    The caller's thread takes them in order: those of the layer whose blob
    is open in the archive go there at once, the others wait in the spill
    file until their layer ends. The output does not depend on the number
    of workers or on how tar's output arrived.
    """

    def __init__(self, comp_argv: List[str], blob: BlobWriter, workers: int, *, stored: bool = True,
                 cache: Optional[PieceCache] = None, spill_dir: Optional[str] = None):
        self.comp_argv = comp_argv  # empty: no compression, the pieces as they are
        self.deflate = deflate_for(comp_argv)  # the same compressor in this process, where it can be
        self.stored = stored  # incompressible pieces may become stored deflate blocks (gzip)
        self.blob = blob
        self.workers = max(1, workers)
        self.cache = cache
        self.spill_dir = spill_dir  # where the spill file goes
        self._producer: Optional[threading.Thread] = None
        self.read = 0
        self._queue: queue.Queue[Tuple[str, Any]] = queue.Queue(maxsize=self.workers + 1)
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="compress")
        self._raw = FilePool("layer-piece", self.workers + 2)
        self._packed = FilePool("layer-piece-gz", self.workers + 2)

    def _file(self, raw: Any) -> int:
        """The piece in a file: its buffers written into one of the pool (or already one)"""
        if isinstance(raw, int):
            return raw
        fd = self._raw.take()
        started = time.perf_counter()
        size = 0
        for data in raw:
            write_all(fd, data)
            size += len(data)
        os.ftruncate(fd, size)  # a file of the pool may be longer
        PHASES.add("writing", time.perf_counter() - started)
        return fd

    def _as_is(self, raw: Any, size: int) -> Packed:
        """The piece uncompressed (compression none)"""
        return Packed(self._file(raw), 0, size, NO_KEY, 0, True, "", None)

    def _compress(self, raw: Any, size: int, prefix: str = "") -> Packed:
        """The compressed piece: from the cache (found by the sha256 of the
        piece), or made in a file of the pool"""
        key = NO_KEY
        if self.cache:
            key = self._key(raw, size)
            hit = self.cache.get(key)
            if hit:
                if isinstance(raw, int):
                    self._raw.give(raw)
                return Packed(*hit[:3], key, hit[3], False, prefix, None)
        if self.deflate is not None:
            return self._deflate(raw, size, key, prefix)
        out = -1
        piece = self._file(raw)
        try:
            out = self._packed.take()
            with mapped(piece, size) as view:
                if self._stored(out, view):
                    return self._made(out, key, prefix)
            os.lseek(piece, 0, os.SEEK_SET)
            started = time.perf_counter()
            proc = subprocess.run(self.comp_argv, stdin=piece, stdout=out, check=False)
            PHASES.add("compressing", time.perf_counter() - started)
            if proc.returncode != 0:
                raise RuntimeError(f"create layer: {self.comp_argv[0]} exited with status {proc.returncode}")
            return self._made(out, key, prefix)
        except BaseException:
            if out >= 0:
                os.close(out)
            raise
        finally:
            self._raw.give(piece)

    def _stored(self, out: int, data: Any) -> bool:
        """Random or already compressed data (gzip only): stored deflate
        blocks into `out`, at memory speed, instead of a search that finds
        nothing; False (nothing written) for data worth compressing"""
        if not (self.stored and incompressible(data)):
            return False
        stored = zlib.compressobj(0, zlib.DEFLATED, 31)
        write_all(out, stored.compress(data) + stored.flush())
        return True

    def _deflate(self, raw: Any, size: int, key: str, prefix: str) -> Packed:
        """The piece compressed in this thread by libdeflate (see deflate.py)"""
        assert self.deflate is not None
        out = self._packed.take()
        try:
            with piece_buffer(raw, size) as data:
                if not self._stored(out, data):
                    started = time.perf_counter()
                    made = self.deflate.compress(data)
                    PHASES.add("compressing", time.perf_counter() - started)
                    write_all(out, made)
            return self._made(out, key, prefix)
        except BaseException:
            os.close(out)
            raise
        finally:
            if isinstance(raw, int):
                self._raw.give(raw)

    @staticmethod
    def _key(raw: Any, size: int) -> str:
        """The sha256 of a piece (its buffers, or its file), the key of the cache"""
        started = time.perf_counter()
        if isinstance(raw, int):
            with mapped(raw, size) as view:
                key = hashlib.sha256(view).hexdigest()
        else:
            digest = hashlib.sha256()
            for data in raw:
                digest.update(data)
            key = digest.hexdigest()
        PHASES.add("hashing", time.perf_counter() - started)
        return key

    def _made(self, out: int, key: str, prefix: str) -> Packed:
        """A piece compressed here into `out` (its CRC for the cache index)"""
        compressed = os.lseek(out, 0, os.SEEK_CUR)
        crc = 0
        if self.cache and compressed:
            with mapped(out, compressed) as made:
                crc = zlib.crc32(made)
        return Packed(out, 0, compressed, key, crc, True, prefix, None)

    def _replay(self, raw: Any, size: int, prefix: str, chain: Tuple[Chain, int]) -> Packed:
        """Piece `chain[1]` of a recorded blob, which the piece is (their
        streams have the same digest up to its end): taken as it is, or, if
        that archive changed, compressed again"""
        assert self.cache is not None
        hit = self.cache.replay(*chain)
        if hit is None:
            return self._compress(raw, size, prefix)
        if isinstance(raw, int):
            self._raw.give(raw)
        return Packed(*hit[:3], chain[0].pieces[chain[1]].key, hit[3], False, prefix, chain)

    def _put(self, item: Tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        self._discard(item)
        return False

    @staticmethod
    def _discard(item: Tuple[str, Any]) -> None:
        kind, value = item
        if kind == "piece":
            try:
                os.close(value[1].result().fd)
            except BaseException:  # pylint: disable=broad-except  # its error is already reported or moot
                pass

    def _end(self, index: int, diff: Digest, direct: Optional[int], spill: "Spill", mtime: int, *,
             entries: int) -> Optional[Dict[str, Any]]:
        """Finish the blob of layer `index` (`entries` tar entries): the open
        one, or one whose pieces all wait in the spill file (None if it is empty)"""
        trail = None
        if index != direct:
            if direct is not None:
                raise RuntimeError(f"create layer: layer {index + 1} ended inside another")
            if not diff.size:
                return None
            self.blob.begin()
            pieces, trail = spill.pieces(index)
            for where, piece in pieces:
                at = self.blob.write_fd(spill.fd, piece.size, where, hashed=True)
                self._record(piece, at)
        blob_digest, size = self.blob.end(mtime, trail)
        if self.cache:
            self.cache.end_blob(blob_digest, size)
        return {"diff_id": diff.digest, "raw_size": diff.size, "digest": blob_digest, "size": size,
                "entries": entries}

    def _record(self, piece: Packed, where: int) -> None:
        """The cache index learns where a piece of this archive lies (and the count whether it came from there)"""
        if self.cache:
            if piece.made:
                self.cache.misses += 1
            else:
                self.cache.hits += 1
            self.cache.record(RecordedPiece(piece.key, where, piece.size, piece.crc, piece.prefix))

    def _spill_piece(self, spill: "Spill", index: int, piece: Packed) -> int:
        """Keep a compressed piece of a layer whose blob is not open in the spill file; its size"""
        try:
            return spill.add(index, piece)
        finally:
            self._release(piece)

    def _release(self, piece: Packed) -> None:
        """The file of a compressed piece back to the pool (made here) or closed (from the cache)"""
        if piece.made:
            self._packed.give(piece.fd)
        else:
            os.close(piece.fd)

    def _write_piece(self, piece: Packed) -> int:
        """Append a compressed piece to the blob (the cache learns where it went); its size"""
        try:
            where = self.blob.write_fd(piece.fd, piece.size, piece.offset, chain=piece.chain)
        finally:
            self._release(piece)
        self._record(piece, where)
        return piece.size

    def run(self, mtime: int, log=print) -> List[Optional[Dict[str, Any]]]:
        """Write every layer; for each: diff_id, raw_size, digest, size (None for an empty one)

        The pieces of the layer whose blob is open in the archive go there
        at once; those of other layers (SplitLayers makes all at the same
        time) wait in the spill file until their layer's end."""
        producer = self.start()
        results: Dict[int, Optional[Dict[str, Any]]] = {}
        direct: Optional[int] = None  # the layer whose blob is open in the archive
        spill = Spill(self.spill_dir)
        started = last = time.monotonic()
        written = 0
        try:
            while True:
                try:
                    kind, value = self._queue.get(timeout=0.25)
                except queue.Empty:
                    kind, value = "idle", None
                if kind == "begin":
                    if direct is None:
                        self.blob.begin()
                        direct = value
                elif kind == "piece":
                    index, future = value
                    written += self._write_piece(future.result()) if index == direct else \
                        self._spill_piece(spill, index, future.result())
                elif kind == "end":
                    index, diff, entries = value
                    results[index] = self._end(index, diff, direct, spill, mtime, entries=entries)
                    direct = None
                elif kind == "error":
                    raise value
                elif kind == "done":
                    break
                now = time.monotonic()
                if now - last >= PROGRESS_INTERVAL:
                    last = now
                    log(f"oci-archive: layers {human(self.read)} read, {human(written)} written, "
                        f"{human(self.read / (now - started))}/s", flush=True)
        finally:
            self._shut_down(producer)
            spill.close()
        return [results[i] for i in sorted(results)]

    def _produce(self) -> None:
        raise NotImplementedError

    def start(self) -> threading.Thread:
        """Start the producer (tar, cutting, compressing): run() takes what it makes"""
        if self._producer is None:
            self._producer = threading.Thread(target=self._produce, name="layer-tar", daemon=True)
            self._producer.start()
        return self._producer

    def _shut_down(self, producer: threading.Thread) -> None:
        """Stop the producer, drop what it made and no one took, end the workers"""
        self._stop.set()
        while producer.is_alive() or not self._queue.empty():
            try:
                self._discard(self._queue.get(timeout=0.1))
            except queue.Empty:
                continue
        producer.join()
        self._pool.shutdown(wait=True)
        if self.deflate is not None:
            self.deflate.close()
        self._raw.close()
        self._packed.close()


class Stopped(Exception):
    """The consumer gave up (an error, an interrupt): the producer ends quietly"""
