"""Who owns each file of a tree: the dpkg and rpm databases, read without their tools"""

import contextlib
import os
import shutil
import sqlite3
import stat
import tempfile
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

RPMDB_PATHS = [b"usr/lib/sysimage/rpm/rpmdb.sqlite", b"var/lib/rpm/rpmdb.sqlite"]
# RPM header tags and types (rpm's lib/rpmtag.h)
RPMTAG_NAME = 1000
RPMTAG_SIZE = 1009
RPMTAG_LONGSIZE = 5009
RPMTAG_FILEMODES = 1030
RPMTAG_SOURCERPM = 1044
RPMTAG_DIRINDEXES = 1116
RPMTAG_BASENAMES = 1117
RPMTAG_DIRNAMES = 1118
RPM_INT16, RPM_INT32, RPM_INT64, RPM_STRING, RPM_STRING_ARRAY, RPM_I18NSTRING = 3, 4, 5, 6, 8, 9
MAX_SYMLINKS = 40


def resolve_in_tree(root: bytes, path: bytes) -> Optional[bytes]:
    """`path` with every symlink resolved inside `root` (as if root were /)

    Absolute link targets start again at the tree's root, never the host's;
    `..` stops at the root. Returns the path relative to the root (b"" for
    the root itself), or None for a symlink loop.
    """
    parts = [p for p in path.split(b"/") if p and p != b"."]
    parts.reverse()  # a stack: the next component last
    out: List[bytes] = []
    links = 0
    while parts:
        part = parts.pop()
        if part == b"..":
            if out:
                out.pop()
            continue
        out.append(part)
        try:
            target = os.readlink(os.path.join(root, *out))
        except OSError:
            continue  # not a symlink, or not there: taken as it is
        out.pop()
        links += 1
        if links > MAX_SYMLINKS:
            return None
        if target.startswith(b"/"):
            out = []
        parts.extend(reversed([p for p in target.split(b"/") if p and p != b"."]))
    return b"/".join(out)


class PathCanon:
    """Canonical tree paths of listed paths: parents resolved through the tree's symlinks

    Every directory is resolved once, from its resolved parent: one
    readlink per directory, however many paths are listed in it.
    """

    def __init__(self, root: bytes):
        self.root = root
        # listed directory -> its tree path (None where it cannot be resolved)
        self.known: Dict[bytes, Optional[bytes]] = {b"": b""}

    def directory(self, path: bytes) -> Optional[bytes]:
        """The tree path of the listed directory `path` (b"/bin" -> b"usr/bin")"""
        if path in self.known:
            return self.known[path]
        parts = path.split(b"/")
        resolved: Optional[bytes] = b""
        prefix = b""
        for part in parts:
            prefix = prefix + b"/" + part if prefix or part else part
            if prefix in self.known:
                resolved = self.known[prefix]
            elif resolved is None or part in (b"", b"."):
                self.known[prefix] = resolved
            elif part == b"..":
                resolved = self.known[prefix] = resolved.rpartition(b"/")[0]
            else:
                candidate = resolved + b"/" + part if resolved else part
                if os.path.islink(os.path.join(self.root, candidate)):
                    candidate = resolve_in_tree(self.root, candidate)
                resolved = self.known[prefix] = candidate
        return resolved

    def __call__(self, path: bytes) -> Optional[bytes]:
        parent, _, name = path.rstrip(b"/").rpartition(b"/")
        if not name or name in (b".", b".."):
            return None
        resolved = self.directory(parent)
        if resolved is None:
            return None
        return resolved + b"/" + name if resolved else name


def dpkg_sources(status: bytes, sizes: Optional[Dict[bytes, int]] = None) -> Dict[bytes, bytes]:
    """Binary package name (and name:arch) -> its source package, from
    dpkg's status file; `sizes` gets each one's Installed-Size in bytes"""
    sources: Dict[bytes, bytes] = {}
    for paragraph in status.split(b"\n\n"):
        fields: Dict[bytes, bytes] = {}
        for line in paragraph.split(b"\n"):
            if line[:1] in (b" ", b"\t") or b":" not in line:
                continue
            key, _, value = line.partition(b":")
            fields[key.strip().lower()] = value.strip()
        package = fields.get(b"package")
        if not package:
            continue
        source = fields.get(b"source", b"").split(b" ", 1)[0] or package
        sources[package] = source
        if fields.get(b"architecture"):
            sources[package + b":" + fields[b"architecture"]] = source
        if sizes is not None and fields.get(b"installed-size", b"").isdigit():
            sizes[package] = int(fields[b"installed-size"]) * 1024  # dpkg counts in KiB
            if fields.get(b"architecture"):
                sizes[package + b":" + fields[b"architecture"]] = sizes[package]
    return sources


def dpkg_owners(root: bytes, canon: PathCanon, log, sizes: Optional[Dict[bytes, int]] = None) -> Dict[bytes, bytes]:
    """Tree path -> source package of the dpkg package that lists it;
    `sizes` gets the installed size of each source package's binaries"""
    info = os.path.join(root, b"var/lib/dpkg/info")
    installed: Dict[bytes, int] = {}
    try:
        with open(os.path.join(root, b"var/lib/dpkg/status"), "rb") as f:
            sources = dpkg_sources(f.read(), installed)
        names = sorted(n for n in os.listdir(info) if n.endswith(b".list"))
    except OSError as e:
        if os.path.lexists(os.path.join(root, b"var/lib/dpkg")):
            log(f"oci-archive: layers: dpkg database unreadable ({e.strerror}): its files count as unpackaged")
        return {}
    owners: Dict[bytes, bytes] = {}
    known = canon.known
    for name in names:
        package = name[:-len(b".list")]
        group = sources.get(package) or sources.get(package.split(b":", 1)[0]) or package.split(b":", 1)[0]
        try:
            with open(os.path.join(info, name), "rb") as f:
                listed = f.read().split(b"\n")
        except OSError as e:
            log(f"oci-archive: layers: {os.fsdecode(name)} unreadable ({e.strerror}): skipped")
            continue
        if sizes is not None:
            sizes[group] = sizes.get(group, 0) + installed.get(package, 0)
        # a listed path with listed paths below it is one of the package's
        # directories: never owned, even where the tree has a symlink there
        # (merged /usr: the lists name /bin, the tree's /bin links to usr/bin)
        directories = {path.rpartition(b"/")[0] for path in listed}
        for path in listed:  # canon(path), inlined: this loop runs once per packaged file
            parent, _, base = path.rpartition(b"/")
            if path in directories or base in (b"", b".", b".."):
                continue
            resolved = known[parent] if parent in known else canon.directory(parent)
            if resolved is None:
                continue
            key = resolved + b"/" + base if resolved else base
            old = owners.get(key)
            if old is None or group < old:
                owners[key] = group
    log(f"oci-archive: layers: dpkg database: {len(names)} packages, {len(owners)} paths")
    return owners


FILE_TAGS = (RPMTAG_NAME, RPMTAG_SIZE, RPMTAG_LONGSIZE, RPMTAG_SOURCERPM, RPMTAG_BASENAMES, RPMTAG_DIRNAMES,
             RPMTAG_DIRINDEXES, RPMTAG_FILEMODES)


def rpm_header(blob: bytes, wanted: Tuple[int, ...] = FILE_TAGS) -> Dict[int, Any]:
    """The `wanted` tags of an RPM header blob (as rpmdb.sqlite stores it): by default those that
    name files and sources"""
    index_count, data_length = int.from_bytes(blob[0:4], "big"), int.from_bytes(blob[4:8], "big")
    data = blob[8 + 16 * index_count:]
    if len(data) < data_length:
        raise ValueError("truncated header")
    tags: Dict[int, Any] = {}
    for i in range(index_count):
        entry = blob[8 + 16 * i:24 + 16 * i]
        tag, kind, offset, count = (int.from_bytes(entry[k:k + 4], "big") for k in (0, 4, 8, 12))
        if tag not in wanted:
            continue
        if kind in (RPM_STRING, RPM_I18NSTRING):
            tags[tag] = data[offset:data.index(b"\0", offset)]
        elif kind == RPM_STRING_ARRAY:
            strings = []
            for _ in range(count):
                end = data.index(b"\0", offset)
                strings.append(data[offset:end])
                offset = end + 1
            tags[tag] = strings
        elif kind in (RPM_INT16, RPM_INT32, RPM_INT64):
            width = {RPM_INT16: 2, RPM_INT32: 4, RPM_INT64: 8}[kind]
            tags[tag] = [int.from_bytes(data[offset + width * k:offset + width * (k + 1)], "big")
                         for k in range(count)]
    return tags


def rpm_source_name(header: Dict[int, Any]) -> bytes:
    """`coreutils` of coreutils-9.1-1.fc38.src.rpm; the package name without one"""
    source = header.get(RPMTAG_SOURCERPM)
    if isinstance(source, bytes) and source.count(b"-") >= 2:
        return source.rsplit(b"-", 2)[0]
    name = header.get(RPMTAG_NAME)
    return name if isinstance(name, bytes) else b"unknown"


def read_rpmdb(path: bytes) -> List[bytes]:
    """The header blobs of an rpmdb.sqlite, never writing to the tree

    The tree is an input: the database is opened read-only and immutable.
    Where its write-ahead log holds pages not yet in the database, the two
    are copied to a temporary folder and read from there.
    """
    wal = path + b"-wal"
    with contextlib.ExitStack() as stack:
        if os.path.isfile(wal) and os.path.getsize(wal) > 0:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="oci-archive-rpmdb-"))
            shutil.copyfile(path, os.path.join(work, "rpmdb.sqlite"))
            shutil.copyfile(wal, os.path.join(work, "rpmdb.sqlite-wal"))
            uri = "file:" + urllib.parse.quote(os.path.join(work, "rpmdb.sqlite"))
        else:
            uri = "file:" + urllib.parse.quote(os.fsdecode(path)) + "?mode=ro&immutable=1"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            return [bytes(row[0]) for row in db.execute("SELECT blob FROM Packages")]


def rpm_owners(root: bytes, canon: PathCanon, log, sizes: Optional[Dict[bytes, int]] = None) -> Dict[bytes, bytes]:
    """Tree path -> source RPM of the package that owns it, from the tree's
    rpmdb.sqlite; `sizes` gets the installed size of each source RPM's packages"""
    owners: Dict[bytes, bytes] = {}
    for relative in RPMDB_PATHS:
        path = os.path.join(root, relative)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        try:
            blobs = read_rpmdb(path)
        except (sqlite3.Error, OSError) as e:
            log(f"oci-archive: layers: rpm database {os.fsdecode(relative)} unreadable ({e}): "
                "its files count as unpackaged")
            continue
        for blob in blobs:
            try:
                header = rpm_header(blob)
            except (ValueError, IndexError):
                log("oci-archive: layers: a damaged rpm header: skipped")
                continue
            group = rpm_source_name(header)
            if sizes is not None:
                size = header.get(RPMTAG_LONGSIZE) or header.get(RPMTAG_SIZE) or [0]
                sizes[group] = sizes.get(group, 0) + size[0]
            dirs = header.get(RPMTAG_DIRNAMES, [])
            modes = header.get(RPMTAG_FILEMODES, [])
            for k, (base, index) in enumerate(zip(header.get(RPMTAG_BASENAMES, []),
                                                  header.get(RPMTAG_DIRINDEXES, []))):
                if k < len(modes) and stat.S_ISDIR(modes[k]) or index >= len(dirs):
                    continue
                key = canon(dirs[index] + base)
                if key is not None and (key not in owners or group < owners[key]):
                    owners[key] = group
        log(f"oci-archive: layers: rpm database {os.fsdecode(relative)}: {len(blobs)} packages, "
            f"{len(owners)} paths")
        break
    return owners
