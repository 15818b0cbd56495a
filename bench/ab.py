#!/usr/bin/python3
"""The assembler of two checkouts side by side, in alternating runs

    python3 bench/ab.py OLD_CHECKOUT NEW_CHECKOUT [--trees minbase,usr,many] [--runs 5]

Each run calls the checkout's own `bench/assemble.py` (its assembler's
`main()`, no engine) on the same tree, one layer and layered, gzip; the two
checkouts take turns, the first one alternating, so drift of the machine
falls on both. Trees are those `bench/run.py` made in --scratch. Prints a
markdown table of medians and minimums and NEW / OLD, and checks that both
wrote the same bytes.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

OPTIONS = {"filename": "image.tar", "architecture": "amd64", "source-epoch": 1700000000, "tag": "bench"}
CASES = {"one layer": {}, "layered": {"layers": {}}}


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def once(checkout: str, tree: str, options: Dict, work: str) -> float:
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    start = time.monotonic()
    subprocess.run([sys.executable, os.path.join(checkout, "bench", "assemble.py"), tree, work, json.dumps(options)],
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=checkout))
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--trees", default="minbase,usr,many")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scratch", default="/var/tmp/osbuild-bench")
    args = parser.parse_args()
    sides = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    lines = ["| tree | case | old median s | new median s | old min s | new min s | new / old (median) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="ab-", dir=args.scratch) as scratch:
        for tree_name in args.trees.split(","):
            tree = os.path.join(args.scratch, "trees", tree_name)
            for case, extra in CASES.items():
                times: Dict[str, List[float]] = {"old": [], "new": []}
                sums = {}
                for run in range(args.runs):
                    order = ["old", "new"] if run % 2 == 0 else ["new", "old"]
                    for side in order:
                        work = os.path.join(scratch, side)
                        times[side].append(once(sides[side], tree, dict(OPTIONS, **extra), work))
                        sums[side] = sha256(os.path.join(work, "image.tar"))
                        print(f"ab: {tree_name} {case} {side}: {times[side][-1]:.2f} s", file=sys.stderr)
                same = "" if sums["old"] == sums["new"] else " (different bytes!)"
                old, new = statistics.median(times["old"]), statistics.median(times["new"])
                lines.append(f"| {tree_name} | {case} | {old:.2f} | {new:.2f} | {min(times['old']):.2f} | "
                             f"{min(times['new']):.2f} | {new / old:.3f}{same} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
