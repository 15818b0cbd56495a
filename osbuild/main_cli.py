"""The osbuild command line

osbuild [--store DIR] [-l|--libdir DIR] [--checkpoint ID]... [--json]
        [--output-directory DIR] [--inspect] MANIFEST|-

Exit status: 0 success, 1 build failed (or unknown checkpoint), 2 invalid
manifest, 130 interrupted.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, NoReturn, Optional, TextIO, Union

from . import __version__
from .buildroot import SandboxError
from .formats import v1
from .inputs import InputError
from .meta import Index, ModuleError, host_os_release
from .monitor import BaseMonitor, LogMonitor
from .objectstore import ObjectStore
from .pipeline import BuildError, Manifest
from .sources import SourceError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


def default_libdir() -> str:
    """The modules next to the package: a source checkout, or the installed copy"""
    package = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(package)
    if os.path.isdir(os.path.join(checkout, "stages")) and os.path.isdir(os.path.join(checkout, "runners")):
        return checkout
    return os.path.join(package, "_libdir")


def parse_arguments(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="osbuild", description="Build operating system images")
    parser.add_argument("manifest_path", metavar="MANIFEST", help="JSON manifest, or '-' for standard input")
    parser.add_argument("--store", metavar="DIR", default=".osbuild",
                        help="object store for intermediate and final results (default: .osbuild)")
    parser.add_argument("-l", "--libdir", metavar="DIR", default=None,
                        help="folder holding stages/, assemblers/, inputs/, runners/ (default: the installed ones)")
    parser.add_argument("--checkpoint", metavar="ID", action="append", default=[],
                        help="stage id to keep in the store (may be given several times)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--output-directory", metavar="DIR", default=None,
                        help="where the assembler's output is written")
    parser.add_argument("--inspect", action="store_true", help="print the manifest with the id of each stage")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _fail(message: str, code: int = EXIT_INVALID) -> int:
    print(f"osbuild: {message}", file=sys.stderr)
    return code


def read_manifest(path: str) -> Any:
    """The parsed manifest; ValueError with a one-line reason otherwise"""
    try:
        if path == "-":
            text = sys.stdin.read()
            name = "<stdin>"
        else:
            name = path
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read manifest {path}: {getattr(e, 'strerror', None) or e}") from e
    try:
        return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{name}: not valid JSON: {e}") from e


def load_manifest(args: argparse.Namespace, description: Any, index: Index, out: TextIO) -> Union[Manifest, int]:
    """The Manifest, or the exit status after reporting every problem"""
    result = v1.validate(description, index)
    if not result.valid:
        if args.json:
            json.dump(result.as_dict(), out)
            out.write("\n")
        name = "<stdin>" if args.manifest_path == "-" else args.manifest_path
        for error in result.errors:
            print(f"osbuild: {name}: {error}", file=sys.stderr)
        return EXIT_INVALID

    def host_runner() -> str:
        release = host_os_release()
        return index.detect_runner(release.get("ID", "linux"), release.get("VERSION_ID", ""))

    try:
        return v1.load(description, index, host_runner)
    except ModuleError as e:
        return _fail(str(e))


def _raise_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def osbuild_cli(argv: Optional[List[str]] = None) -> int:  # noqa: PLR0911  one return per documented outcome
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    out: TextIO = sys.stdout
    libdir = os.path.abspath(args.libdir) if args.libdir else default_libdir()
    if not os.path.isdir(libdir):
        return _fail(f"libdir {libdir}: no such directory")

    try:
        description = read_manifest(args.manifest_path)
    except ValueError as e:
        return _fail(str(e))

    manifest = load_manifest(args, description, Index(libdir), out)
    if isinstance(manifest, int):
        return manifest

    if args.inspect:
        json.dump(v1.describe(manifest, with_id=True), out, indent=2)
        out.write("\n")
        return EXIT_OK

    unknown = manifest.mark_checkpoints(args.checkpoint)
    if unknown:
        return _fail(f"unknown checkpoint: {', '.join(sorted(unknown))}", EXIT_FAILED)
    if not args.output_directory and not args.checkpoint:
        print("osbuild: no --output-directory and no --checkpoint given: nothing to do", file=sys.stderr)
        if args.json:
            json.dump({"success": True, "stages": []}, out)
            out.write("\n")
        return EXIT_OK

    monitor: BaseMonitor = LogMonitor(sys.stderr if args.json else sys.stdout)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    started = time.monotonic()
    try:
        store = ObjectStore(args.store)
        res = manifest.build(store, monitor, libdir, args.output_directory)
        res["duration"] = round(time.monotonic() - started, 3)
    except KeyboardInterrupt:
        print("\nosbuild: interrupted, nothing was kept of the unfinished work", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BuildError, SandboxError, InputError, SourceError, OSError, subprocess.CalledProcessError) as e:
        if args.json:  # stdout still carries one JSON document
            json.dump({"success": False, "error": f"build failed: {e}",
                       "duration": round(time.monotonic() - started, 3)}, out)
            out.write("\n")
        return _fail(f"build failed: {e}", EXIT_FAILED)
    finally:
        signal.signal(signal.SIGTERM, previous)

    report(args, manifest, res, out)
    return EXIT_OK if res["success"] else EXIT_FAILED


def report(args: argparse.Namespace, manifest: Manifest, res: Dict[str, Any], out: TextIO) -> None:
    """The result: JSON, or the ids (success) / the failed stage (failure)"""
    if args.json:
        json.dump(v1.output(manifest, res), out)
        out.write("\n")
    elif res["success"]:
        pipeline = manifest.pipeline
        if pipeline.tree_id:
            out.write(f"tree id: {pipeline.tree_id}\n")
        if pipeline.output_id:
            out.write(f"output id: {pipeline.output_id}\n")
        if args.output_directory and not pipeline.output_id:
            out.write("note: the pipeline has no assembler, nothing was written to the output directory\n")
    else:
        failed = _first_failure(res)
        if failed:
            print(f"osbuild: build failed: {failed['name']} ({failed['id']}): {failed['error']}", file=sys.stderr)


def _first_failure(res: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if "build" in res and not res["build"]["success"]:
        return _first_failure(res["build"])
    for stage in res.get("stages", []) + [res.get("assembler")]:
        if stage and not stage["success"]:
            found: Dict[str, Any] = stage
            return found
    return None


def main() -> None:
    sys.exit(osbuild_cli())
