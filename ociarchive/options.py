"""Options of the OCI archive: checks the schema cannot make, and the image config they describe"""

import os
from typing import Any, Dict, Optional, Tuple

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CMD = ["sh"]
DEFAULT_COMPRESSION = "gzip"
# the most layers by default
DEFAULT_MAX_LAYERS = 16

# uname / RPM / Debian names -> (GOARCH, variant); a variant of None means none
ARCHITECTURES = {
    "amd64": ("amd64", None),
    "x86_64": ("amd64", None),
    "arm64": ("arm64", "v8"),
    "aarch64": ("arm64", "v8"),
    "arm": ("arm", None),
    "armhf": ("arm", "v7"),
    "armhfp": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv7l": ("arm", "v7"),
    "armv7hl": ("arm", "v7"),
    "armel": ("arm", "v5"),
    "armv6": ("arm", "v6"),
    "armv6l": ("arm", "v6"),
    "armv5": ("arm", "v5"),
    "386": ("386", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
    "ppc64le": ("ppc64le", None),
    "ppc64el": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}

# the variants the image spec's platform list names, per GOARCH
VARIANTS = {
    "arm": ["v5", "v6", "v7", "v8"],
    "arm64": ["v8"],
}


def safe_filename(name: str) -> str:
    """Return `name` if it is a plain file name inside the output directory"""
    problem = None
    if not name or name in (".", ".."):
        problem = "must not be empty, '.' or '..'"
    elif "/" in name or "\0" in name:
        problem = "must not contain '/' or NUL"
    elif len(os.fsencode(name)) > 255:
        problem = "must be at most 255 bytes"
    if problem:
        raise ValueError(f"options.filename {name!r}: {problem}")
    return name


def platform(architecture: str, variant: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """Normalize an architecture name to the Go name and variant of the spec"""
    try:
        goarch, implied = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(set(ARCHITECTURES)))
        raise ValueError(f"options.architecture {architecture!r}: unknown, use one of {known}") from None
    if variant is None:
        return goarch, implied
    if variant not in VARIANTS.get(goarch, []):
        allowed = ", ".join(VARIANTS.get(goarch, [])) or "none"
        raise ValueError(f"options.variant {variant!r}: not a variant of {goarch} (allowed: {allowed})")
    return goarch, variant


def string_set(value: Any) -> Dict[str, Dict[str, Any]]:
    """The Go type map[string]struct{} from a list (2021 form) or the object itself"""
    return {key: {} for key in sorted(value)}


def port_key(port: str) -> str:
    number, _, proto = port.partition("/")
    if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("", "tcp", "udp", "sctp"):
        raise ValueError(f"options.config.ExposedPorts {port!r}: expected PORT or PORT/tcp|udp|sctp")
    return f"{int(number)}/{proto or 'tcp'}"


def config_from_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """The `config` object of the image configuration from options.config"""
    config: Dict[str, Any] = {
        "Cmd": list(options.get("Cmd", DEFAULT_CMD)),
        "Env": list(options.get("Env", ["PATH=" + DEFAULT_PATH])),
    }
    stop = options.get("StopSignal")
    legacy = options.get("StopSiganl")
    if stop and legacy and stop != legacy:
        raise ValueError(f"options.config: StopSignal {stop!r} and StopSiganl {legacy!r} disagree")
    stop = stop or legacy
    if stop:
        config["StopSignal"] = stop
    for name in ("Entrypoint", "User", "Labels", "WorkingDir"):
        value = options.get(name)
        if value:
            config[name] = value
    if options.get("ExposedPorts"):
        config["ExposedPorts"] = string_set(port_key(p) for p in options["ExposedPorts"])
    if options.get("Volumes"):
        volumes = options["Volumes"]
        for volume in volumes:
            if not volume.startswith("/"):
                raise ValueError(f"options.config.Volumes {volume!r}: must be an absolute path")
        config["Volumes"] = string_set(volumes)
    return config


def check_layer_options(layers: Dict[str, Any]) -> None:
    """What the schema cannot say about options.layers: no name or path twice, enough layers"""
    groups = layers.get("paths", [])
    names: Dict[str, int] = {}
    seen: Dict[str, str] = {}
    for i, group in enumerate(groups):
        name = group["name"]
        if name in names:
            raise ValueError(f"options.layers.paths[{i}].name {name!r}: also the name of paths[{names[name]}]")
        names[name] = i
        for j, path in enumerate(group["paths"]):
            if not path.startswith("/") or ".." in path.split("/") or "\0" in path:
                raise ValueError(f"options.layers.paths[{i}].paths[{j}] {path!r}: "
                                 "must be an absolute path without '..'")
            key = "/" + "/".join(p for p in path.split("/") if p and p != ".")
            if key in seen:
                raise ValueError(f"options.layers.paths[{i}].paths[{j}] {path!r}: already in group {seen[key]!r}")
            seen[key] = name
    most = layers.get("max", DEFAULT_MAX_LAYERS)
    if len(groups) > most - 1:
        raise ValueError(f"options.layers: {len(groups)} path groups need max of at least {len(groups) + 1}, "
                         f"not {most}")


def sbom_filename(filename: str) -> str:
    """The SBOM's name beside the archive `filename`"""
    return filename + ".spdx.json"


def check_level(compression: str, level: Optional[int]) -> None:
    """The compression level the compressor takes (the schema allows 1-19 for all)"""
    most = {"gzip": 9, "zstd": 19}.get(compression)
    if level is not None and most is not None and not 1 <= level <= most:
        raise ValueError(f"options.compression-level {level}: {compression} takes 1-{most}")


def check_options(options: Dict[str, Any]) -> None:
    """Everything the schema cannot say about a set of options, checked before any work"""
    safe_filename(options["filename"])
    if options.get("sbom") and len(os.fsencode(sbom_filename(options["filename"]))) > 255:
        raise ValueError(f"options.filename {options['filename']!r}: too long for its SBOM "
                         f"{sbom_filename(options['filename'])!r} (255 bytes at most)")
    platform(options["architecture"], options.get("variant"))
    config_from_options(options.get("config", {}))
    check_level(options.get("compression", DEFAULT_COMPRESSION), options.get("compression-level"))
    if "layers" in options:
        check_layer_options(options["layers"])
