#!/usr/bin/python3
"""A difference layer against the whole tree: size and time, in alternating runs

    python3 bench/difflayer.py BASE SECOND [--runs 3]

Runs the format-2 stage org.osbuild.oci-archive in-process twice per run:
`base` BASE plus `layer.1` SECOND (a difference layer), and SECOND alone as
one layer; prints the medians and the sizes of the difference layer and of
the whole tree's layer. Make SECOND as a copy of BASE with a change, e.g.
`cp -a BASE SECOND && dpkg --root=SECOND --force-script-chrootless -i hello.deb`.
"""

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from test.conftest import load_module_script  # noqa: E402  pylint: disable=wrong-import-position

OPTIONS = {"filename": "image.tar", "architecture": "amd64"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("base")
    parser.add_argument("second")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    stage = load_module_script(os.path.join(REPO, "stages", "org.osbuild.oci-archive"))
    cases = {"base + layer.1": {"base": args.base, "layer.1": args.second}, "second alone": {"base": args.second}}
    times = {name: [] for name in cases}
    results = {}
    with tempfile.TemporaryDirectory(prefix="difflayer-") as scratch:
        for run in range(args.runs):
            for name in (list(cases) if run % 2 == 0 else list(reversed(cases))):
                out = os.path.join(scratch, "out")
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                seen = []
                inputs = {key: {"path": path} for key, path in cases[name].items()}
                started = time.monotonic()
                with contextlib.redirect_stdout(sys.stderr):  # the build log
                    stage.main(out, inputs, OPTIONS, {"source-epoch": 1700000000}, metadata=seen.append)
                times[name].append(time.monotonic() - started)
                results[name] = seen[0]
    diff, whole = results["base + layer.1"]["layers"][1], results["second alone"]["layers"][0]
    two, one = statistics.median(times["base + layer.1"]), statistics.median(times["second alone"])
    print(f"| base + layer.1 | {two:.2f} s | layer.1: {diff['size'] / 1024:.0f} KiB ({diff['raw_size'] / 1024:.0f} KiB "
          f"uncompressed) |")
    print(f"| second alone, one layer | {one:.2f} s | {whole['size'] / 2**20:.1f} MiB ({whole['raw_size'] / 2**20:.1f} "
          f"MiB uncompressed) |")
    print(f"| ratio | {two / one:.2f} | {diff['size'] / whole['size']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
