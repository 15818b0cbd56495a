"""Splitting tar's stream: each entry to its layer, each layer cut into pieces by content"""

import concurrent.futures
import contextlib
import os
import queue
import subprocess
import tarfile
import threading
import time
import zlib
from typing import Any, List, Optional, Tuple

from .archive import BlobWriter
from .cache import Chain, PieceCache
from .pieces import ChunkedLayers, Packed, Stopped
from .plan import LayerPlan
from .tarstream import (
    END_OF_ARCHIVE,
    ZERO_BLOCK,
    TarReader,
    octal_field,
    pax_entry,
    repeated_header,
    tree_key,
    ustar_name,
)
from .util import PHASES, Digest, bigger_pipe, check_exit, unnamed_file, write_all

# the piece of the tar stream one libdeflate-gzip run compresses
CHUNK_SIZE = 4 * 1024 * 1024
# pieces end at a tar entry chosen by its header (see LayerStream), at
# least PIECE_MIN into the piece, at most CHUNK_SIZE
PIECE_MIN = 1024 * 1024
CUT_EVERY = 16
# files this large are cut on their own, every PIECE_INNER bytes of their data
BIG_ENTRY = 1024 * 1024
PIECE_INNER = CHUNK_SIZE - 64 * 1024
# until the plan is made, up to READ_AHEAD bytes of tar's stream are read
# ahead; small entries gather in STAGE bytes of memory per layer before
# they go to the layer's piece file: in memory for up to MEMORY_LAYERS
# layers (at most CHUNK_SIZE each), beyond that in unnamed files on the
# archive's disk, so that pieces are never cut early: where a piece of a
# layer ends must not depend on the other layers, or one package would
# change other blobs
READ_AHEAD = 16 * 1024 * 1024
STAGE = 256 * 1024
MEMORY_LAYERS = 16
# how many flushed buffers (STAGE bytes, or up to tar's READ_BUFFER for big files) may wait to be hashed
HASH_QUEUE = 16


def copy_big(src: "TarReader", stream: "LayerStream", data: int) -> bool:
    """Move `data` bytes of a big entry from the stream to the layer, cut
    every PIECE_INNER bytes (not at its end); False if the stream ends first"""
    inner = PIECE_INNER
    while data:
        if not src.need(1):
            return False
        n = min(data, src.hi - src.lo, inner)
        stream.put(src.view[src.lo:src.lo + n])
        src.skip(n)
        data -= n
        inner -= n
        if not inner and data:
            stream.cut()
            inner = PIECE_INNER
    return True


class LayerStream:
    """The tar stream of one layer, cut out of the tree's, in pieces

    Cuts fall before tar entries and inside large files, chosen by content,
    never by offsets in the stream: a piece ends
    - before an entry whose data is at least BIG_ENTRY bytes, and inside
      such data every PIECE_INNER bytes counted from the start of that data;
    - before an entry (its first header, a pax extended header included)
      whose first header's CRC is a multiple of CUT_EVERY, at least
      PIECE_MIN after the piece's start;
    - at CHUNK_SIZE, where nothing above applies earlier.
    So after a file is added, changed or removed, the cuts fall where they
    fell before from the next chosen entry on: those pieces compress to the
    same bytes and can come from the piece cache.

    With a cache, the digest of the stream up to each cut (its prefix) is
    compared with those of recorded blobs: while they agree, the stream so
    far is that blob's, and its pieces are taken as they are (Chain),
    without a second hash of each piece.
    """

    def __init__(self, index: int, owner: "SplitLayers"):
        self.index = index
        self.owner = owner
        self.memory = len(owner.plan.layers) <= MEMORY_LAYERS
        self.fd = -1  # the open piece's file (on disk, with many layers)
        self.buffers: List[Any] = []  # the open piece's bytes (in memory)
        self.size = 0  # bytes in the open piece, the staged ones included
        self.staged = bytearray()
        self.diff = Digest()  # used by the hashing thread only, as are cuts and following
        self.entries = 0
        self.ended = False  # the stream's own end-of-archive blocks are in
        self.cuts = 0
        # the recorded blobs this stream has been so far (None: none any more)
        self.following: Optional[List[Chain]] = [] if owner.cache else None

    def entry(self, first: bytes, data: Any, big: bool = False) -> None:
        """Append an entry (or, for a big one, its headers): `first` is its first block"""
        size = self.size
        if size and (big or size >= PIECE_MIN and zlib.crc32(first) % CUT_EVERY == 0):
            self.cut()
            size = 0
        self.entries += 1
        n = len(data)
        if n < STAGE and size + n < CHUNK_SIZE:  # the usual case: a small entry
            self.staged += data
            self.size = size + n
            if len(self.staged) >= STAGE:
                self.flush()
        else:
            self.put(data)

    def put(self, data: Any) -> None:
        """Append bytes, cutting at CHUNK_SIZE"""
        while len(data):
            part = data[:CHUNK_SIZE - self.size]
            n = len(part)
            if n >= STAGE:
                self.flush()
                self._write(bytes(part))  # a copy: `data` may be tar's buffer, read into again
            else:
                self.staged += part
                if len(self.staged) >= STAGE:
                    self.flush()
            self.size += n
            if self.size >= CHUNK_SIZE:
                self.cut()
            data = data[n:]

    def _write(self, data: Any) -> None:
        """`data` (which no one changes any more) goes to the open piece, and to be hashed"""
        if self.memory:
            self.buffers.append(data)
        else:
            if self.fd < 0:
                self.fd = unnamed_file(self.owner.spill_dir)
            started = time.perf_counter()
            write_all(self.fd, data)
            self.owner.written_seconds += time.perf_counter() - started
        self.owner.hand(("data", (self, data)))

    def flush(self) -> None:
        if self.staged:
            self._write(self.staged)
            self.staged = bytearray()

    def cut(self) -> None:
        """End the open piece: it goes to be hashed, then compressed"""
        if not self.size:
            return
        self.flush()
        raw: Any = self.buffers
        if self.memory:
            self.buffers = []
        else:
            raw, self.fd = self.fd, -1
        size, self.size = self.size, 0
        self.owner.hand(("cut", (self, raw, size)))

    def hashed_cut(self, raw: Any, size: int) -> None:
        """In the hashing thread, the piece's digest is complete: see whether
        it continues a recorded blob, and pass it on"""
        prefix, chain = "", None
        if self.owner.cache:
            prefix = self.diff.prefix()
            if self.following is not None:
                self.following = self.owner.cache.follow(self.following, self.cuts, prefix)
                chain = (self.following[0], self.cuts) if self.following else None
        self.cuts += 1
        self.owner.piece(self.index, raw, size, prefix, chain)

    def finish(self) -> None:
        """The end-of-archive blocks (for a layer with entries) and the last piece"""
        if self.entries and not self.ended:
            self.put(END_OF_ARCHIVE)
        self.cut()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SplitLayers(ChunkedLayers):
    """The layers of a LayerPlan, cut out of one tar stream of the whole tree

    tar reads the tree once. Each entry goes to the layer the plan names,
    preceded there by the directories above it that this layer does not
    hold yet, repeated with the mtime `parent_mtime` (their true selves,
    like every directory, are in the volatile layer). All layers are made
    at the same time and their pieces compressed on all cores; the volatile
    layer's blob is written into the archive as its pieces come, the
    others' compressed pieces wait in a spill file beside the archive and
    follow when the stream ends. A plan of one layer (LayerPlan.single)
    gives tar's stream as it is, every byte.
    """

    def __init__(self, argv: List[str], comp_argv: Optional[List[str]], blob: BlobWriter, workers: int, *,
                 stored: bool = True, cache: Optional[PieceCache] = None, spill_dir: Optional[str] = None,
                 parent_mtime: int = 0, plan_later: bool = False, prefix: bytes = b""):
        super().__init__(comp_argv or [], blob, workers, stored=stored, cache=cache, spill_dir=spill_dir)
        self.argv = argv
        self.plan = LayerPlan.single()  # until set_plan (with plan_later)
        self.parent_mtime = parent_mtime
        self.prefix = prefix  # tar entries that come before tar's stream (a difference layer's whiteouts)
        self._planned = threading.Event()
        if not plan_later:
            self._planned.set()
        self._streams: List[LayerStream] = []
        self.written_seconds = 0.0  # the producer's writes of pieces
        self.waited_seconds = 0.0  # the producer waiting for hashing and compressing to take what it made
        # the producer's bytes and cuts on their way to the hashing thread
        self._hashq: queue.Queue[Tuple[str, Any]] = queue.Queue(maxsize=HASH_QUEUE)
        self._reader: Optional[TarReader] = None

    def set_plan(self, plan: LayerPlan) -> None:
        """The plan, made while tar has begun to read the tree"""
        self.plan = plan
        self._planned.set()

    def abandon(self) -> None:
        """No plan comes (making it failed): stop tar and the threads"""
        self._stop.set()
        self._planned.set()
        if self._producer:
            self._shut_down(self._producer)

    def piece(self, index: int, raw: Any, size: int, prefix: str = "",
              chain: Optional[Tuple[Chain, int]] = None) -> None:
        """A piece of layer `index` is complete (`prefix`: the digest of the
        layer's stream up to its end; `chain`: the piece of a recorded blob
        it is): compress it (or, for none, pass it on)"""
        future: concurrent.futures.Future[Packed]
        if chain is not None:
            future = self._pool.submit(self._replay, raw, size, prefix, chain)
        elif self.comp_argv:
            future = self._pool.submit(self._compress, raw, size, prefix)
        else:
            future = self._pool.submit(self._as_is, raw, size)
        if not self._put(("piece", (index, future))):
            raise Stopped()

    def hand(self, item: Tuple[str, Any]) -> None:
        """Pass something to the hashing thread, in the stream's order"""
        try:
            self._hashq.put_nowait(item)
            return
        except queue.Full:
            pass
        started = time.perf_counter()  # the threads after this one are behind: wait for them
        try:
            while not self._stop.is_set():
                try:
                    self._hashq.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            raise Stopped()
        finally:
            self.waited_seconds += time.perf_counter() - started

    def _produce(self) -> None:
        hasher = threading.Thread(target=self._hash, name="layer-hash", daemon=True)
        hasher.start()
        started = time.perf_counter()
        try:
            streams = self._split()
            if streams is not None:
                last = self.plan.last
                for index in [last] + list(range(last)):  # the open blob ends first
                    streams[index].finish()
                    self.hand(("end", (index, streams[index])))
        except Stopped:
            pass
        except BaseException as e:  # pylint: disable=broad-except  # handed to the consuming thread
            with contextlib.suppress(Stopped):
                self.hand(("error", e))
        finally:
            for stream in self._streams:
                stream.close()
            reading = self._reader.seconds if self._reader else 0.0
            PHASES.add("splitting", time.perf_counter() - started - reading - self.written_seconds
                       - self.waited_seconds)
            PHASES.add("waiting", self.waited_seconds)
            PHASES.add("tar read", reading)
            PHASES.add("writing", self.written_seconds)
            with contextlib.suppress(Stopped):
                self.hand(("done", None))
            hasher.join()
            while not self._hashq.empty():  # left when stopped: files of pieces
                kind, value = self._hashq.get()
                if kind == "cut" and isinstance(value[1], int):
                    os.close(value[1])

    def _hash(self) -> None:
        """The hashing thread: each layer's digest as its bytes come; at each
        cut, the piece goes on to be compressed (or taken from the cache);
        everything else goes to the consuming thread in order"""
        failed = False
        while not self._stop.is_set():
            try:
                kind, value = self._hashq.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if failed:  # only drain, so that the producer never waits
                    if kind == "cut" and isinstance(value[1], int):
                        os.close(value[1])
                elif kind == "data":
                    value[0].diff.update(value[1])
                elif kind == "cut":
                    value[0].hashed_cut(value[1], value[2])
                elif kind == "end":
                    index, stream = value
                    if not self._put(("end", (index, stream.diff, stream.entries))):
                        return
                elif not self._put((kind, value)):
                    return
            except Stopped:
                return
            except BaseException as e:  # pylint: disable=broad-except  # handed to the consuming thread
                failed = True
                self._put(("error", e))
            if kind == "done":
                return

    def _parents(self, stream: LayerStream, stack: List[List[Any]]) -> None:
        """The directories above the entry that `stream` does not hold yet"""
        bit = 1 << stream.index
        k = len(stack)
        while k and not stack[k - 1][4] & bit:
            k -= 1
        for frame in stack[k:]:
            if frame[5] is None:
                frame[5] = repeated_header(frame[1], self.parent_mtime)
            stream.entry(frame[5][:tarfile.BLOCKSIZE], frame[5])
            frame[4] |= bit

    # the loop runs once per entry of the tree: its names stay local
    def _split(self) -> Optional[List[LayerStream]]:  # pylint: disable=too-many-locals,too-many-branches,too-many-statements
        """Read the tree's tar stream into the layers' streams (None if stopped)

        tar starts at once; until the plan is there, what it writes is
        read ahead (up to READ_AHEAD bytes) so that it does not wait."""
        block = tarfile.BLOCKSIZE
        # the directories above the entry: [tree path, its headers, the explicit
        # layer it is in, whether it is package state, the layers holding it
        # (bits), its headers as a repeated parent]
        stack: List[List[Any]] = []
        outside = [b"", b"", None, False, 0, None]
        # reaped in the finally clause
        tar = subprocess.Popen(self.argv, stdout=subprocess.PIPE)  # pylint: disable=consider-using-with
        try:
            bigger_pipe(tar.stdout)
            src = self._reader = TarReader(tar.stdout.fileno())
            if self.prefix:
                src.ahead.append(self.prefix)
                src.ahead_size += len(self.prefix)
            while not self._planned.is_set():
                if not src.read_ahead(READ_AHEAD):
                    self._planned.wait(0.05)
            need, stopped = src.need, self._stop.is_set
            plan, last = self.plan, self.plan.last
            owner_get, explicit_get, volatile_paths = plan.owners.get, plan.explicit.get, plan.volatile_paths
            explicit = plan.explicit
            top = outside
            streams = self._streams = [LayerStream(i, self) for i in range(len(plan.layers))]
            if stopped():
                return None
            self.hand(("begin", last))
            entries = 0
            lo, hi, view = src.lo, src.hi, src.view
            while True:
                if hi - lo < block:
                    src.lo = lo
                    if not need(block):
                        break  # tar ended early: its exit status says why
                    lo, hi, view = src.lo, src.hi, src.view
                first = view[lo:lo + block].tobytes()
                if first[257:262] != b"ustar":
                    if first == ZERO_BLOCK:
                        src.lo = lo
                        if len(streams) == 1:  # one layer: tar's own end, every byte of it
                            streams[0].put(src.rest())
                            streams[0].ended = True
                        else:
                            src.drain()
                        self.read = src.offset
                        tar.wait()
                        check_exit(tar)
                        return streams
                    raise RuntimeError(f"create layer: no tar header at byte {src.base + lo} of tar's stream")
                head, pax, header = block, None, first
                if first[156] == 0x78:  # "x": a pax extended header comes first
                    size = octal_field(first[124:136])
                    head = 2 * block + size + (-size % block)
                    if hi - lo < head:
                        src.lo = lo
                        if not need(head):
                            break
                        lo, hi, view = src.lo, src.hi, src.view
                    pax = view[lo + block:lo + block + size].tobytes()
                    header = view[lo + head - block:lo + head].tobytes()
                    if header[257:262] != b"ustar":
                        raise RuntimeError(f"create layer: no tar header at byte {src.base + lo + head - block} "
                                           "of tar's stream")
                kind = header[156]
                size = int(header[124:135], 8) if header[135] == 0 else octal_field(header[124:136])
                name = link = None
                if pax is not None and (b" path=" in pax or b" size=" in pax or b" linkpath=" in pax):
                    name, link, size = pax_entry(pax, size)
                if name is None:
                    if header[345]:
                        name = ustar_name(header)
                    else:
                        end = header.find(b"\0", 0, 100)
                        name = header[:end] if end >= 0 else header[:100]
                key = name[2:] if name[:2] == b"./" and kind != 0x35 else tree_key(name)
                parent = key.rpartition(b"/")[0]
                if top[0] != parent:
                    while stack and stack[-1][0] != parent:
                        stack.pop()
                    top = stack[-1] if stack else outside
                if kind == 0x35:  # "5": a directory, as it is, in the volatile layer
                    top = [key, view[lo:lo + head].tobytes(), explicit_get(key, top[2]),
                           top[3] or key in volatile_paths, 0, None]
                    stack.append(top)
                    layer = last
                else:
                    if kind == 0x31:  # "1": a hard link goes where its target went
                        layer = plan.route(tree_key(link if link is not None else ustar_name(header, 157)))
                    elif explicit and key in explicit:  # the deepest explicit path decides
                        layer = explicit[key]
                    elif top[2] is not None:
                        layer = top[2]
                    else:
                        layer = last if top[3] or key in volatile_paths else owner_get(key, last)
                    if layer != last and not top[4] & (1 << layer):
                        self._parents(streams[layer], stack)
                stream = streams[layer]
                data = size + (-size % block)
                n = head + data
                if size < BIG_ENTRY:
                    if hi - lo < n:
                        src.lo = lo
                        if not need(n):
                            break
                        lo, hi, view = src.lo, src.hi, src.view
                    # LayerStream.entry for the usual small entry, inlined
                    piece = stream.size
                    if piece >= PIECE_MIN and zlib.crc32(first) % CUT_EVERY == 0:
                        stream.cut()
                        piece = 0
                    if n < STAGE and piece + n < CHUNK_SIZE:
                        staged = stream.staged
                        staged += view[lo:lo + n]
                        stream.size = piece + n
                        stream.entries += 1
                        if len(staged) >= STAGE:
                            stream.flush()
                    else:
                        stream.entry(first, view[lo:lo + n])
                    lo += n
                else:
                    stream.entry(first, view[lo:lo + head], big=True)
                    src.lo = lo + head
                    if not copy_big(src, stream, data):
                        break
                    lo, hi, view = src.lo, src.hi, src.view
                entries += 1
                if not entries % 1024 or size >= BIG_ENTRY:
                    if stopped():
                        break
                    self.read = src.base + lo
            if self._stop.is_set():
                return None
            tar.wait()
            check_exit(tar)
            raise RuntimeError("create layer: tar's stream ends without its end-of-archive blocks")
        finally:
            if tar.poll() is None:
                tar.kill()
            tar.stdout.close()
            tar.wait()
