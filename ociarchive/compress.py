"""Compressors: which program, and the streaming path for those that are not run per piece"""

import os
import shutil
import subprocess
import threading
import time
import zlib
from typing import BinaryIO, List, Optional, Tuple

from .archive import BlobWriter
from .options import check_level
from .util import CHUNK, PHASES, PROGRESS_INTERVAL, Digest, bigger_pipe, check_exit, human, write_all

# the test for incompressible pieces (see `incompressible`)
SAMPLE_SIZE = 16 * 1024
SAMPLES = 7


class Compressor:
    """How the layer is compressed: a program, and whether it streams

    A streaming compressor reads the tar stream on stdin and writes to
    stdout. A chunked one (libdeflate-gzip, which needs its whole input in
    memory) is run once per CHUNK_SIZE piece of the stream, on all cores;
    its gzip members, concatenated in order, are one valid gzip stream.
    """

    def __init__(self, argv: List[str], chunked: bool = False):
        self.argv = argv
        self.chunked = chunked
        self.name = argv[0]


def compressor(compression: str, level: Optional[int], which=None) -> Optional[Compressor]:
    """The compressor for `compression` found in the build root; None for none"""
    which = which or shutil.which
    if compression == "none":
        return None
    check_level(compression, level)
    if compression == "zstd":
        if not which("zstd"):
            raise RuntimeError("compression zstd: the zstd program is not in the build root")
        # -T0: one worker per core; the output does not depend on their number
        return Compressor(["zstd", "--quiet", "--stdout", "-T0", f"-{level or 3}", "--no-check"])
    # libdeflate compresses about twice as fast as zlib; at level 5 it makes
    # what zlib makes at 6 (the gzip default) within 0.5%, 20% faster than its
    # own level 6. pigz is zlib on all cores; gzip the last resort. None of
    # them writes a file name or a time into the header: the same tree, the
    # same bytes (for the same compressor: each makes its own valid stream)
    if which("libdeflate-gzip"):
        return Compressor(["libdeflate-gzip", "-c", f"-{level or 5}"], chunked=True)
    if which("pigz"):
        return Compressor(["pigz", "--no-name", "--stdout", f"-{level or 6}"])
    if which("gzip"):
        return Compressor(["gzip", "--no-name", "--stdout", f"-{level or 6}"])
    raise RuntimeError("compression gzip: none of libdeflate-gzip, pigz or gzip is in the build root")


def incompressible(data) -> bool:
    """True when samples spread over `data` do not shrink with deflate

    All SAMPLES pieces of SAMPLE_SIZE bytes, at offsets that do not line up
    with power-of-two patterns, must stay within 1% of their size; a piece
    that compresses decides at once, so compressible data costs one sample.
    """
    size = len(data)
    if size < SAMPLE_SIZE * SAMPLES:
        return False
    for i in range(SAMPLES):
        offset = (2 * i + 1) * size // (2 * SAMPLES) - SAMPLE_SIZE // 2
        if len(zlib.compress(data[offset:offset + SAMPLE_SIZE], 1)) < SAMPLE_SIZE * 0.99:
            return False
    return True


class Pump:
    """Copy a pipe into a sink, optionally hashing what passes, in a thread"""

    def __init__(self, source: BinaryIO, sink, digest: Optional[Digest], name: str, at_end=None, *,
                 phase: str = "tar read"):
        self.phase = phase  # what the time waiting for the source counts as
        self.source = source
        self.sink = sink
        self.digest = digest
        self.at_end = at_end  # called when the source is exhausted (e.g. to close what the sink feeds)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Pump":
        self.thread.start()
        return self

    def _run(self) -> None:
        fd = self.source.fileno()
        try:
            while True:
                started = time.perf_counter()
                chunk = os.read(fd, CHUNK)
                PHASES.add(self.phase, time.perf_counter() - started)
                if not chunk:
                    break
                if self.digest:
                    self.digest.update(chunk)
                self.sink(chunk)
            if self.at_end:
                self.at_end()
        except BaseException as e:  # pylint: disable=broad-except  # handed to the joining thread
            self.error = e

    def join(self) -> None:
        self.thread.join()
        if self.error:
            raise self.error


def stream_layer(  # pylint: disable=too-many-branches  # one place sets up and tears down the pipeline
        argv: List[str], blob: BlobWriter, comp: Optional[Compressor], log=print) -> Tuple[str, int]:
    """Write the layer that tar `argv` makes through a streaming compressor
    (or none) into the blob begun last.

    Returns (diff_id, uncompressed size); the blob's digest and size are in
    `blob.trail`.
    """
    procs: List[subprocess.Popen] = []
    diff = Digest() if comp else blob.trail.digest
    try:
        # both processes are reaped in the finally clause below
        tar = subprocess.Popen(argv, stdout=subprocess.PIPE)  # pylint: disable=consider-using-with
        procs.append(tar)
        bigger_pipe(tar.stdout)
        pumps = []
        if comp is None:
            pumps.append(Pump(tar.stdout, blob.write, None, "layer").start())
        else:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                comp.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs.append(proc)
            bigger_pipe(proc.stdin)
            bigger_pipe(proc.stdout)
            comp_in = proc.stdin.fileno()
            # the end of the tar stream closes the compressor's input at once: it finishes
            pumps.append(Pump(tar.stdout, lambda data: write_all(comp_in, data), diff, "layer-tar",
                              at_end=proc.stdin.close).start())
            pumps.append(Pump(proc.stdout, blob.write, None, "layer-blob", phase="compressing").start())

        started = last = time.monotonic()
        while any(p.thread.is_alive() for p in pumps):
            next(p for p in pumps if p.thread.is_alive()).thread.join(0.25)
            if len(procs) > 1 and not pumps[0].thread.is_alive() and not procs[1].stdin.closed:
                procs[1].stdin.close()  # the tar side failed: let the compressor end
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL:
                last = now
                log(f"oci-archive: layer {human(diff.size)} read, {human(blob.trail.size)} written, "
                    f"{human(diff.size / (now - started))}/s", flush=True)
        for pump in pumps:
            pump.join()
        for proc in procs:
            check_exit(proc)
    except BrokenPipeError as e:
        # the compressor died; its exit status says more than the broken pipe
        for proc in procs[1:]:
            check_exit(proc, cause=e)
        raise
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream and not stream.closed:
                    stream.close()
    return diff.digest, diff.size
