#!/usr/bin/python3
"""The sha256 of a fixed set of archives, to show that a change of code changes no byte

    python3 bench/samebytes.py [WORKDIR] > sums.json

Builds deterministic trees (the Debian-like test tree with awkward entries:
pax names and link names, a sparse file, big files, hard links, device
nodes as root; and, where the host has it, a copy of /usr/share/perl5) and
assembles each with one layer and layered, in gzip, zstd and none, and with
a warm piece cache, through the assembler's own `main()`. Prints one JSON
object: case name -> sha256 of the archive. Compare two runs with `diff`.
"""

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

# pylint: disable=wrong-import-position,wrong-import-order  # the paths above first
from assemble import load_assembler  # noqa: E402

from osbuild.objectstore import link_output  # noqa: E402
from test.debtree import EPOCH, make_debian_tree, set_times, write_package  # noqa: E402


def awkward_tree(root: str) -> str:
    """The Debian-like tree plus entries that need pax records, sparse and big files"""
    make_debian_tree(root)
    rng = random.Random(7)
    deep = "/usr/share/doc/coreutils/" + "d" * 90 + "/" + "f" * 120
    write_package(root, "longnames", files=[deep, "/usr/bin/" + "t" * 150])
    os.symlink("x" * 200, os.path.join(root, "usr/share/doc/coreutils", "l" * 110))
    os.link(os.path.join(root, "usr/bin", "t" * 150), os.path.join(root, "usr/bin", "u" * 150))
    with open(os.path.join(root, "var/sparse"), "wb") as f:
        f.truncate(6 * 1024 * 1024)
        f.seek(2 * 1024 * 1024)
        f.write(b"middle")
    os.makedirs(os.path.join(root, "opt/app"), exist_ok=True)
    with open(os.path.join(root, "opt/app/big"), "wb") as f:
        f.write(rng.randbytes(3 * 1024 * 1024 + 100))
    with open(os.path.join(root, "opt/app/text"), "wb") as f:
        f.write(b"".join(rng.choice([b"alpha ", b"beta ", b"gamma\n"]) for _ in range(2_000_000)))
    set_times(root, EPOCH)
    return root


def usr_tree(root: str) -> str:
    """A copy of a real folder of this host, made once, every mtime fixed"""
    source = "/usr/share/perl5"
    if os.path.isdir(source):
        subprocess.run(["cp", "-a", source, root], check=True)
        set_times(root, EPOCH)
    else:
        os.makedirs(root)
    return root


CASES = {
    "one-gzip": {},
    "one-zstd": {"compression": "zstd"},
    "one-none": {"compression": "none"},
    "layered-gzip": {"layers": {"paths": [{"name": "app", "paths": ["/opt/app"]}]}},
    "layered-zstd": {"compression": "zstd", "layers": {"max": 8}},
    "layered-none": {"compression": "none", "layers": {}},
    "one-gzip-config": {"tag": "example/app:1", "annotations": {"a": "b"}, "compression-level": 9,
                        "config": {"Cmd": ["/bin/app"], "ExposedPorts": ["80"], "StopSiganl": "SIGINT"}},
}


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> int:
    work = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="samebytes-")
    module = load_assembler()
    trees = {"awkward": awkward_tree(os.path.join(work, "awkward")), "perl5": usr_tree(os.path.join(work, "perl5"))}
    sums = {}
    for tree_name, tree in trees.items():
        for case, extra in CASES.items():
            options = {"filename": "image.tar", "architecture": "amd64", "source-epoch": EPOCH, **extra}
            for cached in (False, True):
                out = os.path.join(work, "out", tree_name, case, str(cached))
                cache = os.path.join(work, "cache", tree_name, case) if cached else None
                rounds = 2 if cached else 1  # the second round reuses what the first left in the cache
                for _ in range(rounds):
                    shutil.rmtree(out, ignore_errors=True)
                    os.makedirs(out)
                    output_id = uuid.uuid4().hex
                    with contextlib.redirect_stdout(sys.stderr):  # the build log
                        status = module.main(out, {"tree": {"path": tree}}, options, cache=cache,
                                             output_id=output_id)
                    assert status == 0
                    if cache:
                        link_output(os.path.abspath(cache), output_id, out)
                sums[f"{tree_name}/{case}{'/cache' if cached else ''}"] = sha256(os.path.join(out, "image.tar"))
    json.dump(sums, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
