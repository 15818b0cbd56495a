"""osbuild-oci: a root filesystem folder in, an OCI image archive out

    osbuild-oci ROOTFS -o image.tar [--layers N] [--layer-path NAME=PATH]...
                [--tag T] [--compression gzip|zstd|none] [--level N]
                [--source-epoch S] [--architecture A] [--variant V]
                [--config JSON|FILE] [--annotation K=V]... [--sbom] [--json] [--quiet]

No manifest, no store, no sandbox: the folder is read where it is (never
written) and the archive made by the same code as the assembler
`org.osbuild.oci-archive`, with the same bytes for the same tree and options.
The flags are the assembler's options: their help, choices and checks come
from the assembler's own SCHEMA (FLAGS below only says which flag sets which
option), so the two cannot drift apart.

Exit status: 0 success, 1 the build failed, 2 bad arguments, 128 + N
stopped by signal N (130 for Ctrl-C); nothing partial is left behind.
"""

import argparse
import json
import os
import platform
import re
import stat
import sys
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from ociarchive import assemble
from ociarchive.options import check_options
from ociarchive.util import describe_error

from .interrupt import Interrupted, install, reader_gone
from .interrupt import report as report_interrupt
from .meta import ModuleError, ModuleInfo, default_libdir, validate

PROG = "osbuild-oci"
ASSEMBLER = "org.osbuild.oci-archive"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# flag -> (the option it sets, as a path in the options, its metavar, how its values are read):
# "value" one value, "map" KEY=VALUE pairs into an object, "json" a JSON
# document or a file holding one, "groups" NAME=PATH pairs into path groups,
# "switch" true when given
FLAGS: List[Tuple[str, Tuple[str, ...], str, str]] = [
    ("--architecture", ("architecture",), "ARCH", "value"),
    ("--variant", ("variant",), "VARIANT", "value"),
    ("--compression", ("compression",), "KIND", "value"),
    ("--level", ("compression-level",), "N", "value"),
    ("--source-epoch", ("source-epoch",), "SECONDS", "value"),
    ("--tag", ("tag",), "TAG", "value"),
    ("--annotation", ("annotations",), "KEY=VALUE", "map"),
    ("--config", ("config",), "JSON|FILE", "json"),
    ("--layers", ("layers", "max"), "N", "value"),
    ("--layer-path", ("layers", "paths"), "NAME=PATH", "groups"),
    ("--sbom", ("sbom",), "", "switch"),
]
# the one option no flag sets: -o gives the file name (and the folder it goes to)
OUTPUT_OPTION = "filename"


class UsageError(Exception):
    """A bad argument: exit 2"""


def option_schema(schema: Dict[str, Any], path: Sequence[str]) -> Dict[str, Any]:
    """The schema of the option at `path` (("layers", "max") -> its "max" property)"""
    node = schema
    for key in path:
        node = node["properties"][key]
    return node


def flag_of(where: Sequence[Any]) -> str:
    """The flag that sets the option at JSON path `where` (the longest match), or the path itself"""
    keys = tuple(k for k in where if isinstance(k, str))
    if keys[:1] == (OUTPUT_OPTION,):
        return "-o"
    matches = [(len(path), flag) for flag, path, _, _ in FLAGS if keys[:len(path)] == path]
    if not matches:  # above the flags' options (`layers` itself): the first flag below it
        matches = [(0, flag) for flag, path, _, _ in FLAGS if keys and path[:len(keys)] == keys][:1]
    return max(matches)[1] if matches else ".".join(map(str, where))


def host_architecture() -> Optional[str]:
    return platform.machine() or None


def make_parser(schema: Dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Turn a root filesystem folder into an OCI image archive "
        "(the same bytes as the org.osbuild.oci-archive assembler for the same tree and options).",
        epilog="SOURCE_DATE_EPOCH, when set, is the default of --source-epoch. "
        "Exit status: 0 success, 1 build failed, 2 bad arguments, 130 interrupted.")
    parser.add_argument("rootfs", metavar="ROOTFS", help="the folder to make the image of (only read)")
    parser.add_argument("-o", "--output", metavar="FILE", required=True,
                        help="the archive to write (replaced only once it is complete)")
    for flag, path, metavar, kind in FLAGS:
        node = option_schema(schema, path)
        text = node.get("description", "").replace("%", "%%")
        extra: Dict[str, Any] = {}
        if kind in ("map", "groups"):
            extra["action"] = "append"
            text += " (repeatable)"
        if kind == "value" and "enum" in node:
            extra["choices"] = node["enum"]
        if kind == "value" and node.get("type") == "integer":
            extra["type"] = int
        if "default" in node and kind == "value":
            text += f" (default: {node['default']})"
        if kind == "switch":
            extra.update(action="store_const", const=True)
        else:
            extra["metavar"] = metavar
        parser.add_argument(flag, dest=flag[2:].replace("-", "_"), help=text, **extra)
    parser.add_argument("--json", action="store_true",
                        help="print the result (digests, layers, sizes, seconds) as one JSON document on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    return parser


def pairs(values: Optional[List[str]], flag: str, what: str) -> List[Tuple[str, str]]:
    out = []
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {value!r}: expected {what}")
        out.append((key, rest))
    return out


def read_json(value: str, flag: str) -> Any:
    """A JSON document given inline (starting with '{') or in a file"""
    text = value
    if not value.lstrip().startswith("{"):
        try:
            with open(value, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"{flag} {value!r}: not inline JSON, and not a readable file ({e.strerror})") from e
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"{flag} {value!r}: not valid JSON ({e})") from e


def options_from_args(args: argparse.Namespace, environ: Dict[str, str]) -> Dict[str, Any]:
    """The assembler's options that the arguments give"""
    options: Dict[str, Any] = {OUTPUT_OPTION: os.path.basename(args.output)}
    for flag, path, _, kind in FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if kind == "map":
            value = dict(pairs(value, flag, "KEY=VALUE"))
        elif kind == "json":
            value = read_json(value, flag)
        elif kind == "groups":
            groups: Dict[str, List[str]] = {}
            for name, where in pairs(value, flag, "NAME=PATH"):
                groups.setdefault(name, []).append(where)
            value = [{"name": name, "paths": paths} for name, paths in groups.items()]
        node = options
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    if "architecture" not in options:
        machine = host_architecture()
        if not machine:
            raise UsageError("--architecture: this machine does not say what it is: give one")
        options["architecture"] = machine
    if "source-epoch" not in options and environ.get("SOURCE_DATE_EPOCH"):
        epoch = environ["SOURCE_DATE_EPOCH"]
        if not epoch.isdigit():
            raise UsageError(f"SOURCE_DATE_EPOCH {epoch!r}: not a number of seconds")
        options["source-epoch"] = int(epoch)
    return options


def check_paths(rootfs: str, output: str) -> Tuple[str, str]:
    """The folder to read and the folder to write into, both checked"""
    try:
        if not stat.S_ISDIR(os.stat(rootfs).st_mode):
            raise UsageError(f"ROOTFS {rootfs!r}: not a folder")
    except FileNotFoundError:
        raise UsageError(f"ROOTFS {rootfs!r}: no such folder") from None
    except OSError as e:
        raise UsageError(f"ROOTFS {rootfs!r}: not readable ({e.strerror})") from None
    if not os.access(rootfs, os.R_OK | os.X_OK):
        raise UsageError(f"ROOTFS {rootfs!r}: not readable")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise UsageError(f"-o {output!r}: the folder {out_dir!r} does not exist")
    if os.path.isdir(output):
        raise UsageError(f"-o {output!r}: is a folder; give the archive's file name")
    real_root, real_out = os.path.realpath(rootfs), os.path.realpath(out_dir)
    if real_out == real_root or real_out.startswith(real_root.rstrip("/") + "/"):
        raise UsageError(f"-o {output!r}: inside ROOTFS, the archive would read itself")
    return os.path.abspath(rootfs), out_dir


def parse(argv: Sequence[str], environ: Dict[str, str]) -> Tuple[argparse.Namespace, Dict[str, Any], str, str]:
    """Arguments -> (args, checked options, rootfs, output folder); UsageError for bad ones"""
    try:
        info = ModuleInfo.load(default_libdir(), "Assembler", ASSEMBLER)
        schema = info.options_schema()
    except ModuleError as e:
        raise RuntimeError(f"the assembler's description: {e}") from e
    parser = make_parser(schema)

    def usage_error(message: str) -> NoReturn:
        raise UsageError(message)

    parser.error = usage_error  # type: ignore[method-assign]  # one line, exit 2, from main
    args = parser.parse_args(argv)
    options = options_from_args(args, environ)
    result = validate(options, schema)
    if not result.valid:
        raise UsageError("\n".join(f"{flag_of(list(e.path))}: {e.message}" for e in result.errors))
    rootfs, out_dir = check_paths(args.rootfs, args.output)
    try:
        check_options(options)
    except ValueError as e:
        raise UsageError(flag_message(str(e))) from e
    return args, options, rootfs, out_dir


def flag_message(message: str) -> str:
    """`options.compression-level 12: ...` -> `--level 12: ...`"""
    if not message.startswith("options."):
        return message
    where, _, rest = message[len("options."):].partition(" ")
    flag = flag_of(re.sub(r"\[\d+\]", "", where.rstrip(":")).split("."))
    return f"{flag} {rest}" if flag.startswith("-") else message


def main(argv: Optional[Sequence[str]] = None) -> int:
    install()  # SIGINT, SIGTERM, SIGHUP raise Interrupted from here on
    try:
        code = run(sys.argv[1:] if argv is None else argv, dict(os.environ))
        sys.stdout.flush()
        return code
    except Interrupted as e:
        return report_interrupt(e, PROG)
    except BrokenPipeError:
        return reader_gone()


def run(argv: Sequence[str], environ: Dict[str, str]) -> int:
    try:
        args, options, rootfs, out_dir = parse(argv, environ)
    except UsageError as e:
        for line in str(e).splitlines():
            print(f"{PROG}: {line}", file=sys.stderr)
        print(f"{PROG}: see {PROG} --help", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAILED

    def log(*parts: Any, flush: bool = False) -> None:
        if not args.quiet:
            print(*parts, file=sys.stderr, flush=flush)

    try:
        result = assemble(rootfs, out_dir, options, log=log)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"{PROG}: error: {flag_message(describe_error(e))}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        print()
    elif not args.quiet:
        print(os.path.join(out_dir, result["filename"]))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
