"""libdeflate in this process: the gzip member `libdeflate-gzip -c -N` makes of a piece, without the program

Running the program once per piece costs a process start, a copy of the
piece into its buffer and one of the result out of it, on every core at
once. The library it is built on (libdeflate.so.0, which the program
depends on) makes the same bytes from the same input at the same level:
both call libdeflate_gzip_compress, whose header has no name and no time.
It is called through ctypes, which lets go of the interpreter's lock for
the call, so the workers compress in parallel. Where the library cannot
be loaded the program is run, as before; the output is the same.
"""

import ctypes
import ctypes.util
import functools
import threading
from typing import Any, List, Optional

PROGRAM = "libdeflate-gzip"
LIBRARY = "libdeflate.so.0"


def _load() -> Optional[ctypes.CDLL]:
    for name in (LIBRARY, ctypes.util.find_library("deflate")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.libdeflate_alloc_compressor.restype = ctypes.c_void_p
            lib.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
            lib.libdeflate_free_compressor.restype = None
            lib.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
            lib.libdeflate_gzip_compress_bound.restype = ctypes.c_size_t
            lib.libdeflate_gzip_compress_bound.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            lib.libdeflate_gzip_compress.restype = ctypes.c_size_t
            lib.libdeflate_gzip_compress.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                                     ctypes.c_void_p, ctypes.c_size_t]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def level_of(argv: List[str]) -> Optional[int]:
    """The level of a `libdeflate-gzip -c -N` command line (compress.compressor's), None for any other"""
    if len(argv) == 3 and argv[0] == PROGRAM and argv[1] == "-c" and argv[2][:1] == "-" and argv[2][1:].isdigit():
        return int(argv[2][1:])
    return None


class Deflate:
    """gzip members at one level, made in the calling thread (one libdeflate compressor per thread)"""

    def __init__(self, lib: ctypes.CDLL, level: int):
        self.lib = lib
        self.level = level
        self._local = threading.local()
        self._made: List[int] = []  # every compressor allocated, freed by close
        self._lock = threading.Lock()

    def _compressor(self) -> int:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self.lib.libdeflate_alloc_compressor(self.level)
            if not handle:
                raise MemoryError(f"libdeflate: no compressor for level {self.level}")
            with self._lock:
                self._made.append(handle)
            self._local.handle = handle
        return handle

    def _buffer(self, size: int) -> Any:
        """This thread's output buffer, at least `size` bytes"""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < size:
            buffer = self._local.buffer = (ctypes.c_char * size)()
        return buffer

    def compress(self, data: Any) -> memoryview:
        """The gzip member of `data` (bytes, or a writable buffer); valid until this thread's next call"""
        handle = self._compressor()
        size = len(data)
        bound = self.lib.libdeflate_gzip_compress_bound(handle, size)
        out = self._buffer(bound)
        source = data if isinstance(data, bytes) else (ctypes.c_char * size).from_buffer(data)
        made = self.lib.libdeflate_gzip_compress(handle, source, size, out, bound)
        del source  # a buffer exported to ctypes cannot be resized or closed
        if not made:
            raise RuntimeError("libdeflate: the compressed piece did not fit its bound")
        return memoryview(out).cast("B")[:made]

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, []
        for handle in made:
            self.lib.libdeflate_free_compressor(handle)


@functools.cache
def library() -> Optional[ctypes.CDLL]:
    """libdeflate, looked for once per process (None where it does not load)"""
    return _load()


def for_argv(argv: List[str]) -> Optional[Deflate]:
    """The in-process equivalent of compressor command line `argv`, if it
    is libdeflate-gzip's and the library is there; else None"""
    level = level_of(argv)
    if level is None:
        return None
    lib = library()
    return Deflate(lib, level) if lib is not None else None
