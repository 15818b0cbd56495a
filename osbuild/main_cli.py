"""The osbuild command line

osbuild [--store DIR] [-l|--libdir DIR] [--checkpoint ID]... [--json]
        [--output-directory DIR] [--inspect] MANIFEST|-

Exit status: 0 success, 1 build failed (or unknown checkpoint), 2 invalid
manifest, 128 + N on signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple, Union

from . import __version__
from .buildroot import SandboxError
from .formats import v1, v2
from .inputs import InputError
from .interrupt import Interrupted, install, reader_gone
from .interrupt import report as report_interrupt
from .meta import Index, ModuleError, ValidationResult, default_libdir, host_os_release, json_path
from .monitor import BaseMonitor, LogMonitor
from .objectstore import ObjectStore
from .pipeline import BuildError, Manifest
from .pipelines import ManifestV2
from .sources import SourceError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
         "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str) -> Optional[int]:
    """Bytes of `500M`, `20GiB`, `1000000`; None for `unlimited`"""
    if text.strip().lower() == "unlimited":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 20G, 500MiB, 1000000, unlimited)")
    return int(float(match.group(1)) * UNITS[match.group(2) or ""])


def parse_arguments(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="osbuild", description="Build operating system images")
    parser.add_argument("manifest_path", metavar="MANIFEST", help="JSON manifest, or '-' for standard input")
    parser.add_argument("--store", metavar="DIR", default=".osbuild",
                        help="object store for intermediate and final results (default: .osbuild)")
    parser.add_argument("-l", "--libdir", metavar="DIR", default=None,
                        help="folder holding stages/, assemblers/, inputs/, runners/ (default: the installed ones)")
    parser.add_argument("--checkpoint", metavar="ID", action="append", default=[],
                        help="stage id to keep in the store (may be given several times); in format 2 also "
                             "pipeline names and stage types, as fnmatch patterns")
    parser.add_argument("--export", metavar="NAME", action="append", default=[],
                        help="format 2: build pipeline NAME and export its tree to OUTDIR/NAME (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--output-directory", metavar="DIR", default=None,
                        help="where the assembler's output is written")
    parser.add_argument("--inspect", action="store_true", help="print the manifest with the id of each stage")
    parser.add_argument("--cache-max-size", metavar="SIZE", type=parse_size, default=None,
                        help="after the build, remove the least recently used objects of the store until it "
                             "fits in SIZE (bytes, or with a unit: 500M, 20G, 1TiB; 'unlimited', the default)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def _fail(message: str, code: int = EXIT_INVALID) -> int:
    print(f"osbuild: {message}", file=sys.stderr)
    return code


# deeper than any manifest needs, shallow enough for every recursive step after
MAX_DEPTH = 64
MAX_INT_DIGITS = 4300
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_SURROGATE = re.compile("[\ud800-\udfff]")


def _line_column(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line} column {column}"


def _at(text: str, found: Optional["re.Match[str]"]) -> str:
    return f" at {_line_column(text, found.start())}" if found else ""


def _too_deep(text: str) -> Optional[int]:
    """The offset where arrays and objects nest deeper than MAX_DEPTH, if they do"""
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return match.start()
        elif token in "]}":
            depth -= 1
    return None


class _NotJSON(ValueError):
    """NaN or Infinity: Python's json reads them, JSON has no such values"""


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON value")


def _bad_string(document: Any) -> Optional[Tuple[List[Any], str]]:
    """(path, problem) of the first string (or key) that no file could hold: a lone surrogate"""
    stack: List[Tuple[List[Any], Any]] = [([], document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and _SURROGATE.search(value):
            return path, "a lone surrogate (not Unicode text)"
        if isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    return path + [key], "a key with a lone surrogate (not Unicode text)"
                stack.append((path + [key], item))
        elif isinstance(value, list):
            stack.extend((path + [i], item) for i, item in enumerate(value))
    return None


def read_manifest(path: str) -> Any:
    """The parsed manifest; ValueError with a one-line reason, saying where, otherwise"""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read manifest {path}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = _line_column(data[:e.start].decode("utf-8", "replace"), e.start)
        raise ValueError(f"{name}: not UTF-8 text: byte 0x{data[e.start]:02x} at {where}") from e
    deep = _too_deep(text)
    if deep is not None:
        raise ValueError(f"{name}: arrays and objects nested deeper than {MAX_DEPTH} levels at "
                         f"{_line_column(text, deep)}")
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: not valid JSON: {e}") from e
    except _NotJSON as e:
        bad = re.search(r"(?<![\w.])-?(NaN|Infinity)\b", text)
        raise ValueError(f"{name}: not valid JSON: {e}{_at(text, bad)}") from e
    except ValueError as e:  # a number too long for int()
        bad = re.search(rf"\d{{{MAX_INT_DIGITS + 1},}}", text)
        raise ValueError(f"{name}: not valid JSON: an integer of more than {MAX_INT_DIGITS} digits"
                         f"{_at(text, bad)}") from e
    bad_string = _bad_string(document)
    if bad_string:
        where_bad, problem = bad_string
        raise ValueError(f"{name}: {json_path(where_bad) or '.'}: {problem}")
    return document


def report_invalid(args: argparse.Namespace, result: ValidationResult, out: TextIO) -> int:
    """Every problem of an invalid manifest, one line each with its JSON path; exit 2"""
    if args.json:
        json.dump(result.as_dict(), out)
        out.write("\n")
    name = "<stdin>" if args.manifest_path == "-" else args.manifest_path
    for error in result.errors:
        print(f"osbuild: {name}: {error}", file=sys.stderr)
    return EXIT_INVALID


def host_runner(index: Index) -> Callable[[], str]:
    def detect() -> str:
        release = host_os_release()
        return index.detect_runner(release.get("ID", "linux"), release.get("VERSION_ID", ""))
    return detect


def load_manifest(args: argparse.Namespace, description: Any, index: Index, out: TextIO) -> Union[Manifest, int]:
    """The Manifest, or the exit status after reporting every problem"""
    if args.export:
        return _fail("--export names pipelines of format-2 manifests; format 1 writes its assembler's output "
                     "to --output-directory")
    result = v1.validate(description, index)
    if not result.valid:
        return report_invalid(args, result, out)
    try:
        return v1.load(description, index, host_runner(index))
    except ModuleError as e:
        return _fail(str(e))


def failure(args: argparse.Namespace, error: BaseException, started: float, out: TextIO) -> int:
    """A build that could not go on: one line (and one JSON document with --json); exit 1"""
    # an OSError of Python's in words ("no space left on device: PATH"), not as "[Errno 28] ..."
    why = f"{error.strerror[:1].lower()}{error.strerror[1:]}{f': {error.filename}' if error.filename else ''}" \
        if isinstance(error, OSError) and error.strerror else str(error)
    if args.json:  # stdout still carries one JSON document
        json.dump({"success": False, "error": f"build failed: {why}",
                   "duration": round(time.monotonic() - started, 3)}, out)
        out.write("\n")
    return _fail(f"build failed: {why}", EXIT_FAILED)


BUILD_ERRORS = (BuildError, SandboxError, InputError, SourceError, OSError, subprocess.CalledProcessError)


def report_v2(args: argparse.Namespace, manifest: ManifestV2, res: Dict[str, Any], out: TextIO) -> None:
    """A format-2 build's result: JSON, or where each export went (success) / the failed stage"""
    if args.json:
        json.dump(v2.output(res), out)
        out.write("\n")
    elif res["success"]:
        for name in args.export:
            out.write(f"{name}: {manifest.pipelines[name].id} exported to "
                      f"{os.path.join(args.output_directory, name)}\n")
    else:
        failed = next(s for stages in res["pipelines"].values() for s in stages if not s["success"])
        print(f"osbuild: build failed: {failed['name']} ({failed['id']}): {failed['error']}", file=sys.stderr)


def run_v2(args: argparse.Namespace, description: Dict[str, Any], libdir: str,  # noqa: PLR0911
           out: TextIO) -> int:
    """A format-2 manifest: validate, load, then inspect or build what --export names"""
    index = Index(libdir)
    result = v2.validate(description, index)
    if not result.valid:
        return report_invalid(args, result, out)
    try:
        manifest = v2.load(description, index, host_runner(index))
    except ModuleError as e:
        return _fail(str(e))
    unknown = [name for name in args.export if name not in manifest.pipelines]
    if unknown:
        return _fail(f"--export {', '.join(unknown)}: no pipeline of that name "
                     f"(the manifest has {', '.join(manifest.pipelines) or 'none'})", EXIT_FAILED)
    if args.checkpoint and not manifest.mark_checkpoints(args.checkpoint):
        return _fail(f"--checkpoint {', '.join(args.checkpoint)}: matches no pipeline name, stage id or stage type",
                     EXIT_FAILED)
    if args.inspect:
        json.dump(v2.describe(manifest, with_id=True), out, indent=2)
        out.write("\n")
        return EXIT_OK
    if args.export and not args.output_directory:
        return _fail("--export needs --output-directory", EXIT_FAILED)
    if not args.export:
        print("osbuild: no --export given: nothing to build (format 2 builds the pipelines it exports)",
              file=sys.stderr)
        if args.json:
            json.dump({"type": "result", "success": True, "metadata": {}, "log": {}}, out)
            out.write("\n")
        return EXIT_OK
    res = run_build(args, out, lambda store, monitor: manifest.build(
        store, monitor, libdir, exports=args.export, output_directory=args.output_directory,
        cache_max_size=args.cache_max_size))
    if isinstance(res, int):
        return res
    report_v2(args, manifest, res, out)
    return EXIT_OK if res["success"] else EXIT_FAILED


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

    if isinstance(description, dict) and description.get("version") == v2.VERSION:
        return run_v2(args, description, libdir, out)
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

    res = run_build(args, out, lambda store, monitor: manifest.build(
        store, monitor, libdir, args.output_directory, args.cache_max_size))
    if isinstance(res, int):
        return res
    report(args, manifest, res, out)
    return EXIT_OK if res["success"] else EXIT_FAILED


def run_build(args: argparse.Namespace, out: TextIO,
              build: Callable[[ObjectStore, BaseMonitor], Dict[str, Any]]) -> Union[Dict[str, Any], int]:
    """Open the store and build; the result with its duration, or the exit status of a build
    that could not go on (said in one line) or was interrupted"""
    monitor: BaseMonitor = LogMonitor(sys.stderr if args.json else sys.stdout)
    started = time.monotonic()
    try:
        res = build(open_store(args.store, monitor), monitor)
    except Interrupted as e:
        if args.json:
            json.dump({"success": False, "error": f"interrupted ({e.name})"}, out)
            out.write("\n")
        return report_interrupt(e)
    except KeyboardInterrupt:
        print("\nosbuild: interrupted, nothing was kept of the unfinished work", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BUILD_ERRORS as e:
        return failure(args, e, started, out)
    res["duration"] = round(time.monotonic() - started, 3)
    return res


def open_store(path: str, monitor: BaseMonitor) -> ObjectStore:
    """The store; what builds that died left in it is gone (and said)"""
    store = ObjectStore(path)
    count, size = store.swept
    if count:
        monitor.log(f"store: removed {count} leftovers of builds that died ({size / 2**20:.1f} MiB)")
    return store


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
    """The command: signals end it with 128 + their number"""
    install()
    try:
        code = osbuild_cli()
        sys.stdout.flush()
    except Interrupted as e:
        code = report_interrupt(e)
    except BrokenPipeError:
        code = reader_gone()
    sys.exit(code)
