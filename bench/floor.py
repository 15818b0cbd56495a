#!/usr/bin/python3
"""The floor of a rebuild: read the tree and hash its stream once

    floor.py TREE [SOURCE_EPOCH]

GNU tar writes the layer stream of TREE exactly as org.osbuild.oci-archive
asks for it (the same arguments), and this one Python process reads it and
computes its sha256, the layer's diff_id, which even a rebuild that reuses
every compressed piece must know. Prints the seconds, the bytes and the
digest. Nothing can rebuild the archive faster than this on the same
machine without trusting something other than the tree's content.
"""

import hashlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position  # this checkout's package
from ociarchive.tarstream import layer_tar_argv  # noqa: E402
from ociarchive.util import bigger_pipe  # noqa: E402

BUFFER = 2 * 1024 * 1024


def main() -> int:
    tree = sys.argv[1]
    epoch = int(sys.argv[2]) if len(sys.argv) > 2 else None
    started = time.monotonic()
    digest = hashlib.sha256()
    size = 0
    with subprocess.Popen(layer_tar_argv(tree, epoch), stdout=subprocess.PIPE) as tar:
        assert tar.stdout is not None
        bigger_pipe(tar.stdout)
        buffer = bytearray(BUFFER)
        view = memoryview(buffer)
        fd = tar.stdout.fileno()
        while got := os.readv(fd, [buffer]):
            digest.update(view[:got])
            size += got
    if tar.returncode != 0:
        print(f"floor: tar exited with status {tar.returncode}", file=sys.stderr)
        return 1
    print(f"{time.monotonic() - started:.3f} s, {size} bytes, sha256:{digest.hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
