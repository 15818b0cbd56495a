"""A small Debian-like tree with a dpkg database, for the layer tests

Merged /usr (the lists name /bin/... while the files live in /usr/bin), a
`pkg:arch.list`, two binary packages of one source package, a hard link
between files of two packages, directories with their own modes and owners,
a package large enough for a layer of its own, unowned files and (as root)
device nodes.
"""

import os
import random
from typing import Dict, List, Optional

EPOCH = 1600000000

# package -> (source, files (as the list names them), arch-qualified list name)
PACKAGES: Dict[str, Dict] = {
    "coreutils": {"source": None, "files": ["/bin/ls", "/usr/bin/cat", "/usr/share/doc/coreutils/copyright"]},
    "libfoo1": {"source": "foo (1.2-3)", "arch": "amd64", "files": ["/lib/x86_64-linux-gnu/libfoo.so.1"]},
    "foo-tools": {"source": "foo", "files": ["/usr/bin/foo"]},
    "bigdata": {"source": None, "files": ["/usr/share/bigdata/blob.bin"]},
    "tzdata": {"source": None, "files": ["/usr/share/zoneinfo/UTC", "/usr/share/zoneinfo/Europe/Berlin"]},
}


def _write(root: str, path: str, data: bytes, mode: int = 0o644) -> None:
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)
    os.chmod(full, mode)


def content(name: str, version: str, size: int = 2000) -> bytes:
    """Compressible bytes that differ per file and version"""
    rng = random.Random(f"{name}-{version}")
    words = [b"alpha", b"beta", b"gamma", b"delta", name.encode(), version.encode()]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def real_path(listed: str) -> str:
    """Where a listed path lives with a merged /usr"""
    for alias in ("/bin/", "/sbin/", "/lib/"):
        if listed.startswith(alias):
            return "/usr" + listed
    return listed


def write_package(root: str, package: str, version: str = "1", files: Optional[List[str]] = None) -> None:
    spec = PACKAGES.get(package, {"source": None, "files": files or []})
    files = files or spec["files"]
    installed = 0
    for listed in files:
        size = 5 * 1024 * 1024 if package == "bigdata" else 2000
        data = content(listed, version, size)
        if package == "bigdata":  # too random to shrink much: a big blob
            data = random.Random(version).randbytes(size)
        _write(root, real_path(listed), data, 0o755 if "/bin/" in listed else 0o644)
        installed += len(data)
    parents = set()
    for listed in files:
        parent = os.path.dirname(listed)
        while parent != "/":
            parents.add(parent)
            parent = os.path.dirname(parent)
    list_name = f"{package}:{spec['arch']}.list" if spec.get("arch") else f"{package}.list"
    lines = ["/."] + sorted(parents) + list(files)
    _write(root, f"/var/lib/dpkg/info/{list_name}", ("\n".join(lines) + "\n").encode())
    stanza = f"Package: {package}\nStatus: install ok installed\nArchitecture: {spec.get('arch', 'all')}\n"
    if spec.get("source"):
        stanza += f"Source: {spec['source']}\n"
    stanza += f"Version: {version}\nInstalled-Size: {(installed + 1023) // 1024}\nDescription: test package {package}\n"
    with open(os.path.join(root, "var/lib/dpkg/status"), "a", encoding="utf-8") as f:
        f.write(stanza + "\n")


def set_times(root: str, when: int = EPOCH) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)
    os.utime(root, (when, when))


def make_debian_tree(root: str, versions: Optional[Dict[str, str]] = None) -> str:
    """The tree; `versions` picks the version (content) of each package"""
    versions = versions or {}
    os.makedirs(os.path.join(root, "usr", "bin"), exist_ok=True)
    for alias in ("bin", "sbin", "lib"):
        os.makedirs(os.path.join(root, "usr", alias), exist_ok=True)
        os.symlink(f"usr/{alias}", os.path.join(root, alias))
    os.makedirs(os.path.join(root, "var/lib/dpkg/info"))
    open(os.path.join(root, "var/lib/dpkg/status"), "wb").close()
    for package in PACKAGES:
        write_package(root, package, versions.get(package, "1"))
    # a hard link between files of two packages (coreutils' cat, foo-tools' foo)
    os.unlink(os.path.join(root, "usr/bin/foo"))
    os.link(os.path.join(root, "usr/bin/cat"), os.path.join(root, "usr/bin/foo"))
    # directories with modes and owners of their own
    os.chmod(os.path.join(root, "usr/share/doc/coreutils"), 0o750)
    if os.geteuid() == 0:
        os.chown(os.path.join(root, "usr/share/doc/coreutils"), 1000, 1000)
    os.makedirs(os.path.join(root, "srv/data"))
    os.chmod(os.path.join(root, "srv/data"), 0o1777)
    # an app outside any package, and unowned files
    _write(root, "/opt/app/bin/app", content("app", versions.get("app", "1")), 0o755)
    _write(root, "/opt/app/share/data.txt", content("appdata", versions.get("app", "1")))
    _write(root, "/etc/hostname", b"test\n")
    _write(root, "/etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640)
    _write(root, "/var/log/dpkg.log", b"installed\n")
    if os.geteuid() == 0:
        os.makedirs(os.path.join(root, "dev"))
        os.mknod(os.path.join(root, "dev/null"), 0o666 | 0o020000, os.makedev(1, 3))
        os.mknod(os.path.join(root, "dev/sda"), 0o660 | 0o060000, os.makedev(8, 0))
        os.chown(os.path.join(root, "etc/shadow"), 0, 42)
    set_times(root)
    return root


if __name__ == "__main__":
    # python3 debtree.py TREE [PACKAGE=VERSION ...]: used by the end-to-end
    # tests to make the tree inside a stage
    import sys  # pylint: disable=import-outside-toplevel

    make_debian_tree(sys.argv[1], dict(arg.split("=", 1) for arg in sys.argv[2:]))
