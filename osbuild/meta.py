"""Module metadata: description and option schemas, read without importing

Every module (stage, assembler, input, source, runner) is a Python script in
a folder of its kind under the libdir. Its module docstring is its
description and a module-level `SCHEMA = \"\"\"...\"\"\"` string holds the body
of the JSON schema of its options (format 1); `SCHEMA_2` the body of the
schema of its format-2 description (`options`, `inputs`, ...). Both are read
with `ast`: a module is never imported to learn about it. As in today's
osbuild, a `NAME.meta.json` beside the module wins over all of that
(`summary`, `description`, `schema`, `schema_2`).
"""

import ast
import functools
import json
import os
import pkgutil
import re
import stat
import subprocess
import sys
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import jsonschema

from .util.types import PathLike

FOLDERS = {
    "Stage": "stages",
    "Assembler": "assemblers",
    "Input": "inputs",
    "Source": "sources",
    "Runner": "runners",
}


# a module file larger than this is not a module (and not read whole)
MAX_MODULE_SIZE = 4 * 1024 * 1024


class ModuleError(Exception):
    """A module is missing or its metadata is broken"""


def check_module_name(klass: str, name: Any) -> str:
    """`name` if it is a plain module name; ModuleError before any file is opened

    Manifests are data: a name must never reach outside its folder of the
    libdir (`../x`, `/abs/path`) nor name a device, so it is one printable
    path component that does not start with a dot.
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = "must be a non-empty string"
    elif "/" in name or "\0" in name:
        problem = "must be a plain name, without '/' or NUL"
    elif name.startswith("."):
        problem = "must not start with '.'"
    elif not name.isprintable():
        problem = "must consist of printable characters"
    elif len(name.encode("utf-8")) > 255:
        problem = "must be at most 255 bytes"
    if problem:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:77] + "...")
        raise ModuleError(f"{klass.lower()} name {shown}: {problem}")
    return str(name)


def read_module_source(libdir: str, folder: str, name: str) -> str:
    """The text of module `folder/name`: a regular file inside the libdir"""
    where = f"{folder}/{name}"
    path = os.path.join(libdir, folder, name)
    real = os.path.realpath(path)
    # the folder itself may be a link (a libdir put together from others)
    roots = {os.path.realpath(libdir), os.path.realpath(os.path.join(libdir, folder))}
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise ModuleError(f"{where}: resolves to {real}, outside the libdir {libdir}")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ModuleError(f"{where}: cannot read: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ModuleError(f"{where}: not a regular file")
        if st.st_size > MAX_MODULE_SIZE:
            raise ModuleError(f"{where}: {st.st_size} bytes, larger than a module may be ({MAX_MODULE_SIZE})")
        data = f.read(MAX_MODULE_SIZE + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModuleError(f"{where}: not UTF-8 text: {e.reason} at byte {e.start}") from e


# a top-level `SCHEMA = """..."""` (either triple quote), and the string
# that opens a module (its docstring)
SCHEMA_LINE = re.compile(r"^SCHEMA(?:_2)?[ \t]*=", re.MULTILINE)
SCHEMA_STRING = re.compile(r'[ \t]*[rRuU]?("""|\'\'\')(.*?)\1', re.DOTALL)
OPENING_STRING = re.compile(r'\A(?:[ \t]*(?:#[^\n]*)?\n)*[rRuU]?("""|\'\'\')(.*?)\1', re.DOTALL)


def parse_module_head(source: str, path: str, where: str) -> ast.Module:
    """The syntax tree of a module's beginning, up to its last SCHEMA string
    (or its docstring): all that describes it. A module of thousands of
    lines costs a full parse (~35 ms) for nothing else; when the beginning
    does not parse on its own, the whole module is parsed."""
    end = 0
    for line in SCHEMA_LINE.finditer(source):
        literal = SCHEMA_STRING.match(source, line.end())
        if not literal:
            end = -1  # computed or oddly written: the whole module decides
            break
        end = literal.end()
    if not end:
        opening = OPENING_STRING.match(source)
        end = opening.end() if opening else 0
    if end > 0:
        try:
            return ast.parse(source[:end], filename=path)
        except SyntaxError:
            pass  # cut inside something: the whole module decides
    try:
        return ast.parse(source, filename=path)
    except SyntaxError as e:
        raise ModuleError(f"{where}: not valid Python (line {e.lineno}): {e.msg}") from e


class ModuleInfo:
    """What a module says about itself: summary, description, option schemas"""

    def __init__(self, klass: str, name: str, path: str, description: str, schema_body: str, *,
                 schema_2: Optional[Dict[str, Any]] = None, opts: Optional[Dict[str, Any]] = None):
        self.type = klass
        self.name = name
        self.path = path
        self.description = description
        self.summary = description.split("\n", 1)[0].strip()
        self._schema_body = schema_body
        self._opts: Optional[Dict[str, Any]] = opts
        self.schema_2 = schema_2  # the format-2 description's schema body, None without one

    @classmethod
    def load(cls, libdir: PathLike, klass: str, name: str) -> "ModuleInfo":
        folder = FOLDERS[klass]
        check_module_name(klass, name)
        path = os.path.join(os.fspath(libdir), folder, name)
        where = f"{folder}/{name}"
        try:
            source = read_module_source(os.fspath(libdir), folder, name)
        except FileNotFoundError:
            raise ModuleError(f"unknown {klass.lower()} {name!r}: no {where} in {os.fspath(libdir)}") from None
        except OSError as e:
            raise ModuleError(f"{where}: cannot read: {e.strerror or e}") from e
        described = cls._load_meta_json(os.fspath(libdir), folder, name, path)
        if described:
            return described
        tree = parse_module_head(source, path, where)
        description = ast.get_docstring(tree)
        if not description:
            raise ModuleError(f"{where}: the module has no docstring (its description)")
        strings = {}
        for node in tree.body:
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in ("SCHEMA", "SCHEMA_2"):
                    if not isinstance(node.value, ast.Constant) or not isinstance(node.value.value, str):
                        raise ModuleError(f"{where}: {target.id} must be a plain string literal")
                    strings[target.id] = node.value.value
        schema_2 = None
        if strings.get("SCHEMA_2", "").strip():
            try:
                schema_2 = json.loads("{" + strings["SCHEMA_2"] + "}")
            except ValueError as e:
                raise ModuleError(f"{where}: SCHEMA_2 is not valid JSON: {e}") from e
        return cls(klass, name, path, description, strings.get("SCHEMA", ""), schema_2=schema_2)

    @classmethod
    def _load_meta_json(cls, libdir: str, folder: str, name: str, path: str) -> Optional["ModuleInfo"]:
        """The module as its NAME.meta.json describes it (None without one): that file wins"""
        where = f"{folder}/{name}.meta.json"
        try:
            text = read_module_source(libdir, folder, name + ".meta.json")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ModuleError(f"{where}: not valid JSON: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("summary"), str):
            raise ModuleError(f"{where}: no summary")
        lines = data.get("description", [])
        description = "\n".join([data["summary"], "", *lines] if isinstance(lines, list) else [data["summary"], "",
                                                                                             str(lines)])
        schema, schema_2 = data.get("schema"), data.get("schema_2")
        if schema is not None and not isinstance(schema, dict) or schema_2 is not None and \
                not isinstance(schema_2, dict):
            raise ModuleError(f"{where}: schema and schema_2 must be objects")
        return cls(FOLDERS_KLASS[folder], name, path, description.strip(), "", schema_2=schema_2 or None,
                   opts=schema or {"additionalProperties": True})

    @property
    def opts(self) -> Dict[str, Any]:
        """The options schema as an object (without the wrapping)"""
        if self._opts is None:
            body = self._schema_body.strip()
            try:
                self._opts = json.loads("{" + body + "}") if body else {"additionalProperties": True}
            except ValueError as e:
                raise ModuleError(f"{FOLDERS[self.type]}/{self.name}: SCHEMA is not valid JSON: {e}") from e
        return self._opts

    def options_schema(self) -> Dict[str, Any]:
        """A complete JSON schema for the options of this module"""
        return {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "title": f"{self.type} {self.name} options",
            "type": "object",
            **self.opts,
        }

    def v2_schema(self) -> Dict[str, Any]:
        """A complete JSON schema for this module's object in a format-2 manifest, as
        upstream makes it: SCHEMA_2 when there is one; a stage with only SCHEMA
        validates its options"""
        schema: Dict[str, Any] = {"$schema": "http://json-schema.org/draft-04/schema#",
                                  "title": f"{self.type} {self.name}", "type": "object"}
        if self.type == "Stage":
            body = dict(self.schema_2) if self.schema_2 else {"options": {"type": "object", **self.opts}}
            properties = {"type": {"enum": [self.name]}, **body}
            properties.setdefault("devices", {"type": "object"})
            properties.setdefault("mounts", {"type": "array"})
            properties.setdefault("inputs", {"type": "object"})
            definitions = properties.pop("definitions", None)
            schema.update(additionalProperties=False, required=["type"], properties=properties)
            if definitions:
                schema["definitions"] = definitions
            return schema
        schema.update(self.schema_2 if self.schema_2 else {"additionalProperties": True})
        return schema


FOLDERS_KLASS = {folder: klass for klass, folder in FOLDERS.items()}


class Index:
    """All modules of one libdir, loaded lazily and cached"""

    def __init__(self, libdir: PathLike):
        self.libdir = os.fspath(libdir)
        self._cache: Dict[Tuple[str, str], ModuleInfo] = {}

    def get_module_info(self, klass: str, name: str) -> ModuleInfo:
        key = (klass, name)
        if key not in self._cache:
            self._cache[key] = ModuleInfo.load(self.libdir, klass, name)
        return self._cache[key]

    def list_modules(self, klass: str) -> List[str]:
        folder = os.path.join(self.libdir, FOLDERS[klass])
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith("org.") and not n.endswith((".json", ".yaml", ".py")))

    def detect_runner(self, distro: str, version: str) -> str:
        """The runner for a host of os-release ID `distro` and VERSION_ID `version`

        As osbuild does: `org.osbuild.<ID><VERSION_ID without dots>`, or else
        the nearest older runner of the same distribution.
        """
        wanted = f"org.osbuild.{distro}{version.replace('.', '')}"
        available = self.list_modules("Runner")
        if wanted in available:
            return wanted
        parts = [int(p) for p in version.split(".") if p.isdigit()] or [0]
        width = len(str(parts[0]))
        prefix = f"org.osbuild.{distro}"
        older = []
        for name in available:
            digits = name[len(prefix):]
            if not name.startswith(prefix) or not digits.isdigit():
                continue
            # the runner's digits are the VERSION_ID without dots: split them
            # like the wanted version (major of the same width, then minor)
            key = [int(digits[:width])] + ([int(digits[width:])] if digits[width:] else [])
            if key <= parts:
                older.append((key, name))
        if older:
            return max(older)[1]
        raise ModuleError(f"no runner for this host: neither {wanted} nor an older "
                          f"org.osbuild.{distro}* in {os.path.join(self.libdir, 'runners')}")


def host_os_release(path: str = "/etc/os-release") -> Dict[str, str]:
    """Parse os-release; an empty dict if there is none"""
    result: Dict[str, str] = {}
    for candidate in (path, "/usr/lib/os-release"):
        try:
            with open(candidate, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                result[key] = value.strip().strip("\"'")
        break
    return result


# the interpreter module scripts name in their shebang
MODULE_PYTHON = "/usr/bin/python3"


@functools.cache
def host_python() -> str:
    """The interpreter for modules run on the host (inputs, sources)

    The one their shebang names when it is a Python 3.9 or newer: the
    system's interpreter starts in a fraction of the time a virtualenv's or
    pyenv's takes. Else the one running osbuild. The version is read from
    the name the link resolves to (python3.11); an unusual name is asked.
    """
    real = os.path.realpath(MODULE_PYTHON)
    if real == os.path.realpath(sys.executable) or not os.access(MODULE_PYTHON, os.X_OK):
        return sys.executable
    named = re.fullmatch(r"python3\.(\d+)", os.path.basename(real))
    if named:
        return MODULE_PYTHON if int(named.group(1)) >= 9 else sys.executable
    try:
        probe = subprocess.run([MODULE_PYTHON, "-c", "import sys; sys.exit(sys.version_info < (3, 9))"],
                               capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return sys.executable
    return MODULE_PYTHON if probe.returncode == 0 else sys.executable


def default_libdir() -> str:
    """The modules next to the package: a source checkout, or the installed copy"""
    package = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(package)
    if os.path.isdir(os.path.join(checkout, "stages")) and os.path.isdir(os.path.join(checkout, "runners")):
        return checkout
    return os.path.join(package, "_libdir")


def host_module_env() -> Dict[str, str]:
    """Environment for a module run on the host (inputs, sources): this
    osbuild package first on the Python path"""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


def load_schema(name: str) -> Dict[str, Any]:
    """A JSON schema shipped in the package (osbuild/schemas/NAME.json)"""
    data = pkgutil.get_data("osbuild", f"schemas/{name}.json")
    if data is None:
        raise ModuleError(f"schema {name} is missing from the osbuild package")
    schema: Dict[str, Any] = json.loads(data)
    return schema


class ValidationError:
    """One problem in a document: where (a JSON path) and what"""

    def __init__(self, path: Iterable[Any], message: str):
        self.path = list(path)
        self.message = message

    @property
    def id(self) -> str:
        return json_path(self.path)

    def __str__(self) -> str:
        return f"{self.id or '.'}: {self.message}"

    def __repr__(self) -> str:
        return f"ValidationError({self.id!r}, {self.message!r})"


class ValidationResult:
    """All problems found in a document; valid when there are none"""

    def __init__(self, origin: str = ""):
        self.origin = origin
        self.errors: List[ValidationError] = []

    @property
    def valid(self) -> bool:
        return not self.errors

    def fail(self, path: Iterable[Any], message: str) -> None:
        self.errors.append(ValidationError(path, message))

    def merge(self, other: "ValidationResult", prefix: Iterable[Any] = ()) -> None:
        prefix = list(prefix)
        for error in other.errors:
            self.errors.append(ValidationError(prefix + error.path, error.message))

    def as_dict(self) -> Dict[str, Any]:
        return {
            "type": "https://osbuild.org/validation-error",
            "success": False,
            "title": f"JSON Schema validation failed for {self.origin}" if self.origin else "validation failed",
            "errors": [{"path": e.id, "message": e.message} for e in self.errors],
        }


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_@+:-][A-Za-z0-9_.@+:-]*$")


def json_path(path: Iterable[Any]) -> str:
    """`.pipeline.stages[2].options.filename` from ["pipeline", "stages", 2, ...]"""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            out += f".{part}"
        else:  # a key with odd characters is quoted, so the path stays one readable line
            out += "[" + json.dumps(str(part))[:100] + "]"
    return out


def _same_key(value: Any) -> Any:
    """How x-osbuild-unique compares values: absolute paths by their components"""
    if isinstance(value, str) and value.startswith("/"):
        return "/" + "/".join(p for p in value.split("/") if p and p != ".")
    return json.dumps(value, sort_keys=True)


def _unique_across(validator: Any, properties: Any, instance: Any, _schema: Any) -> Iterator[Any]:
    """`x-osbuild-unique`: this engine's schema keyword for what JSON schema
    cannot say: across the objects of an array, no value of property P is
    repeated (for an array-valued P, no element of any of them). Other
    validators ignore an unknown keyword; the module checks it again."""
    if not validator.is_type(instance, "array"):
        return
    for prop in properties:
        seen: Dict[Any, int] = {}
        for i, item in enumerate(instance):
            if not isinstance(item, dict) or prop not in item:
                continue
            values = item[prop]
            located = [((i, prop, j), v) for j, v in enumerate(values)] if isinstance(values, list) \
                else [((i, prop), values)]
            for where, value in located:
                key = _same_key(value)
                if key in seen and seen[key] != i:
                    yield jsonschema.ValidationError(f"{value!r} is also in item {seen[key]}", path=where)
                seen.setdefault(key, i)


def validate(instance: Any, schema: Dict[str, Any], origin: str = "") -> ValidationResult:
    """Every schema violation of `instance`, each with its path"""
    result = ValidationResult(origin)
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    validator_class = jsonschema.validators.extend(base, {"x-osbuild-unique": _unique_across})
    validator = validator_class(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    # a value of the wrong type also fails its enum/pattern/...: report the type only
    wrong_type = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    for error in errors:
        if tuple(error.absolute_path) in wrong_type and error.validator != "type":
            continue
        result.fail(error.absolute_path, _one_line(error))
    return result


def _one_line(error: "jsonschema.ValidationError") -> str:
    message = error.message
    if error.validator == "not" and isinstance(error.validator_value, dict) and "pattern" in error.validator_value:
        message = f"{error.instance!r} must not match {error.validator_value['pattern']!r}"
    if error.validator in ("oneOf", "anyOf") and error.context:
        best = min(error.context, key=lambda e: len(list(e.absolute_path)))
        message = f"{message if len(message) < 80 else 'not valid'}: {best.message}"
    if len(message) > 300:
        message = message[:297] + "..."
    return " ".join(message.split("\n"))
