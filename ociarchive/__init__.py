"""OCI image archives of a filesystem tree: the machinery behind every way in

The assembler `assemblers/org.osbuild.oci-archive`, the `osbuild-oci` command
and anything else that makes an OCI archive call `assemble()`. Standard
library only: the package is copied beside the module scripts into any
osbuild libdir (ours, upstream's of 2021 or of today) and imported in the
sandbox from `/run/osbuild/lib`.

The modules follow the data path; each imports only those above it:

- `util`: digests, writes, pipes, unnamed files, sizes for the log
- `options`: option checks the schema cannot make, the image config
- `layout`: the OCI documents (config, manifest, index, docker's manifest.json)
- `owners`: who owns each file (the tree's dpkg and rpm databases)
- `plan`: which layer each file goes to
- `sbom`: an SPDX 2.3 document of the packages the tree's databases list
- `tarstream`: GNU tar's command line and reading its headers in place
- `diff`: what changed from one tree to the next, with OCI whiteouts
- `archive`: the outer archive, blobs streamed in behind reserved headers
- `compress`: the compressors, and the streaming path (pigz, zstd)
- `deflate`: libdeflate called in this process, the bytes of `libdeflate-gzip` per piece
- `cache`: compressed pieces of earlier archives, found by their content
- `pieces`: pieces compressed on every core, spilled until their blob is written
- `split`: tar's stream cut into layers and pieces by content
- `build`: all of it end to end, the file renamed into place
"""

from .build import assemble

__all__ = ["assemble"]
