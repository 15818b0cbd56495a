#!/usr/bin/python3
"""Rebuilds through `osbuild`: what a small change costs, against the first build and the floor

    python3 bench/rebuild.py [--trees minbase,usr,share,many] [--runs 3] [--output DIR] [--scratch DIR]

For each tree A, tree B is A with one small file added in the middle of
the tree. Both are stored beforehand as the output of a manifest's stage
(two noop stages that differ in their options), so that only the assembly
is timed, through the whole `osbuild` command (interpreter, validation,
sandbox, assembler, commit, export). Per run, with a fresh piece cache and
no stored outputs:

  first      osbuild on A (empty piece cache)
  rebuild    osbuild on B (the cache holds A's archive)
  same tree  osbuild on A again, its stored output removed first
  floor      bench/floor.py A: tar's stream of the tree, as the assembler
             asks for it, read and sha256'd once by one Python process

Every rebuild must give the bytes of a build without cache (the script
checks it and fails otherwise). Reported per tree: medians, the ratios
rebuild / first and rebuild / floor, and, from the assembler's own result
(`--json`), seconds per phase of the first build and of the rebuild, with
the engine's share (the whole command less the assembler's seconds).
`--checkout DIR` builds with another checkout's engine and modules (an
older commit, to compare; one without the profile reports only times).
Trees are made by bench/run.py's recipes (`share` is a copy of the host's
/usr/share) and kept in --scratch. Run as root.
"""

import argparse
import compileall
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

# pylint: disable=wrong-import-position  # this checkout's osbuild and bench, whatever is installed
from run import EPOCH, MIB, inserted_path, log, ours_options, prepare_trees, save_results, tree_size  # noqa: E402

from osbuild.formats import v1  # noqa: E402
from osbuild.meta import Index  # noqa: E402
from osbuild.objectstore import ObjectStore  # noqa: E402

MODULE = "org.osbuild.oci-archive"
PHASES = ("engine", "planning", "tar read", "splitting", "hashing", "cache lookups", "compressing", "writing",
          "waiting")


def manifest(name: str) -> Dict[str, Any]:
    return {"pipeline": {"stages": [{"name": "org.osbuild.noop", "options": {"bench-rebuild": name}}],
                         "assembler": {"name": MODULE, "options": ours_options("gzip")}}}


class Bench:
    """One tree's store with A and B stored, and the commands that build them"""

    def __init__(self, name: str, tree: str, work: str, python: str = sys.executable, checkout: str = REPO):
        self.python = python
        self.checkout = checkout  # whose engine and modules build
        self.name = name
        self.tree = tree
        self.work = work
        self.store_path = os.path.join(work, "store")
        self.ids: Dict[str, Tuple[str, str]] = {}  # A/B -> (tree id, output id)
        os.makedirs(work, exist_ok=True)
        index = Index(REPO)
        store = ObjectStore(self.store_path)
        inserted = inserted_path(tree)
        for label in ("A", "B"):
            loaded = v1.load(manifest(label), index, lambda: "org.osbuild.linux")
            self.ids[label] = (loaded.pipeline.tree_id, loaded.pipeline.output_id)
            with open(os.path.join(work, f"{label}.json"), "w", encoding="utf-8") as f:
                json.dump(manifest(label), f)
            if store.contains(loaded.pipeline.tree_id):
                continue
            if label == "B":
                with open(inserted, "w", encoding="utf-8") as f:
                    f.write("one small file, added in the middle of the tree\n")
            try:
                log(f"bench: storing tree {label} of {name}")
                store.commit(tree, loaded.pipeline.tree_id)
            finally:
                if label == "B":
                    os.unlink(inserted)

    def forget(self, label: str) -> None:
        """Remove the stored output of A or B, so that the assembler runs again"""
        ref = os.path.join(self.store_path, "refs", self.ids[label][1])
        if os.path.islink(ref):
            target = os.path.realpath(ref)
            os.unlink(ref)
            shutil.rmtree(target, ignore_errors=True)

    def fresh(self) -> None:
        """No stored output, no piece cache"""
        for label in self.ids:
            self.forget(label)
        shutil.rmtree(os.path.join(self.store_path, "cache"), ignore_errors=True)

    def osbuild(self, label: str) -> Dict[str, Any]:
        """Build A or B through the command; wall time, the assembler's result, the archive's sha256"""
        out = os.path.join(self.work, "out")
        shutil.rmtree(out, ignore_errors=True)
        argv = [self.python, "-m", "osbuild", "--libdir", self.checkout, "--store", self.store_path,
                "--output-directory", out, "--json", os.path.join(self.work, f"{label}.json")]
        subprocess.run(["sync"], check=True)
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, check=False,
                              env=dict(os.environ, PYTHONPATH=self.checkout))
        wall = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"osbuild {label} of {self.name} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
        result = json.loads(proc.stdout)
        metadata = (result.get("assembler") or {}).get("metadata") or {}
        with open(os.path.join(out, "image.tar"), "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        profile = dict(metadata.get("profile", {}))
        profile["engine"] = round(wall - metadata.get("seconds", 0.0), 3)
        return {"wall": wall, "profile": profile, "sha256": digest}

    def floor(self) -> float:
        subprocess.run(["sync"], check=True)
        started = time.monotonic()
        subprocess.run([self.python, os.path.join(HERE, "floor.py"), self.tree, str(EPOCH)], check=True,
                       stdout=subprocess.DEVNULL)
        return time.monotonic() - started


def run_tree(name: str, tree: str, scratch: str, runs: int, *, python: str, checkout: str) -> Dict[str, Any]:
    bench = Bench(name, tree, os.path.join(scratch, "work", "rebuild", name), python, checkout)
    # the bytes of a build without cache, the reference of every rebuild
    expected = {}
    for label in ("A", "B"):
        bench.fresh()
        expected[label] = bench.osbuild(label)["sha256"]
    samples: Dict[str, List[Dict[str, Any]]] = {"first": [], "rebuild": [], "same tree": [], "floor": []}
    for run in range(runs):
        bench.fresh()
        samples["first"].append(bench.osbuild("A"))
        samples["rebuild"].append(bench.osbuild("B"))
        bench.forget("A")
        samples["same tree"].append(bench.osbuild("A"))
        samples["floor"].append({"wall": bench.floor()})
        for case, label in (("first", "A"), ("rebuild", "B"), ("same tree", "A")):
            if samples[case][-1]["sha256"] != expected[label]:
                raise RuntimeError(f"{name}: {case} gave other bytes than a build without cache")
        log(f"bench: rebuild {name} run {run + 1}: " + ", ".join(f"{k} {v[-1]['wall']:.2f} s"
                                                                  for k, v in samples.items()))
    medians = {case: statistics.median(s["wall"] for s in values) for case, values in samples.items()}

    def profile(case: str) -> Dict[str, float]:
        phases = {p for s in samples[case] for p in s["profile"]}
        return {p: round(statistics.median(s["profile"].get(p, 0.0) for s in samples[case]), 3)
                for p in PHASES if p in phases}

    return {
        "tree": name, "bytes": tree_size(tree), "runs": runs,
        "median_s": {case: round(value, 3) for case, value in medians.items()},
        "min_s": {case: round(min(s["wall"] for s in values), 3) for case, values in samples.items()},
        "rebuild_vs_first": round(medians["rebuild"] / medians["first"], 3),
        "same_vs_first": round(medians["same tree"] / medians["first"], 3),
        "rebuild_vs_floor": round(medians["rebuild"] / medians["floor"], 3),
        "same_vs_floor": round(medians["same tree"] / medians["floor"], 3),
        "profile": {case: profile(case) for case in ("first", "rebuild", "same tree")},
    }


def default_python() -> str:
    """/usr/bin/python3 where it has jsonschema (as `python3 -m osbuild` runs on Debian), else this one"""
    system = "/usr/bin/python3"
    if os.access(system, os.X_OK) and subprocess.run([system, "-c", "import jsonschema"], check=False,
                                                     capture_output=True).returncode == 0:
        return system
    return sys.executable


def markdown(results: List[Dict[str, Any]]) -> str:
    lines = ["# Rebuilds through osbuild", "",
             f"{platform.node()}: {os.cpu_count()} cores; "
             "medians, every rebuild byte for byte a build without cache", "",
             "| tree | first s | rebuild s | same tree s | floor s | rebuild / first | rebuild / floor "
             "| same / first | same / floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r["median_s"]
        lines.append(f"| {r['tree']} ({r['bytes'] / MIB:.0f} MiB) | {m['first']:.2f} | {m['rebuild']:.2f} | "
                     f"{m['same tree']:.2f} | {m['floor']:.2f} | {r['rebuild_vs_first']:.2f} | "
                     f"{r['rebuild_vs_floor']:.2f} | {r['same_vs_first']:.2f} | {r['same_vs_floor']:.2f} |")
    lines += ["", "Seconds per phase (the assembler's `profile`, summed over the threads working in it; "
              "engine: the command less the assembler):", "",
              "| tree | build | " + " | ".join(PHASES) + " |", "|---|---|" + "---:|" * len(PHASES)]
    for r in results:
        for case, phases in r["profile"].items():
            lines.append(f"| {r['tree']} | {case} | " + " | ".join(f"{phases[p]:.2f}" if p in phases else "-"
                                                                   for p in PHASES) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trees", default="minbase,usr,share,many")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", default=os.path.join(HERE, "results", "latest"))
    parser.add_argument("--scratch", default="/var/tmp/osbuild-bench")
    parser.add_argument("--usr-limit", type=int, default=800)
    parser.add_argument("--python", default=default_python(),
                        help="the interpreter of osbuild and the floor (default: the system's, as a user runs it)")
    parser.add_argument("--checkout", default=REPO,
                        help="the checkout whose engine and modules build (an older one, to compare)")
    args = parser.parse_args()
    compileall.compile_dir(args.checkout, quiet=1, workers=0)  # as an installed engine has it
    trees = prepare_trees(args.scratch, args.trees.split(","), args.usr_limit * MIB, False)
    checkout = os.path.abspath(args.checkout)
    results = [run_tree(name, path, args.scratch, args.runs, python=args.python, checkout=checkout)
               for name, path in trees.items()]
    shutil.rmtree(os.path.join(args.scratch, "work", "rebuild"), ignore_errors=True)
    print(save_results(args.output, "rebuild", results, markdown(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
