"""The object store: committed trees and outputs, named by stage id

Layout of a store directory:
- `objects/<name>`: a committed tree (or assembler output) under a random
  name given at commit; never changed once there;
- `refs/<id>`: a symlink `../objects/<name>` naming the object a stage (or
  pipeline) with that id produced;
- `sizes/<name>`: the bytes an object takes; `stamps/<name>`: the identity
  of its top-level files (inode, size, mtime, mode, owner), checked before
  the object is used: an export shares those files by hard link, and one
  changed in place through its exported name makes the object unusable;
- `tmp/`: work in progress; nothing there is ever visible under `refs/`.

Everything becomes visible with one rename: an object is built in `tmp/`,
renamed into `objects/`, then a symlink made in `tmp/` is renamed over
`refs/<id>`. A crash leaves at most an unreferenced temporary behind.

`StoreServer` / `StoreClient` let input modules (run as separate programs)
ask for the path of a tree by id. Standard library only.
"""

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from .util import jsoncomm
from .util.types import PathLike
from .util.workdirs import LockedDir, folder_size, live_dirs, sweep

SESSION_PREFIX = "build-"
USES = "uses"
EXPORT_PREFIX = ".osbuild-export-"


class StoreError(OSError):
    """A tree could not be copied into or out of the store: one line says what and why"""


def copy_tree(source: PathLike, target: PathLike, what: str) -> None:
    """Copy the contents of `source` into the existing directory `target`,
    keeping everything (owners, modes, xattrs, hard links, devices); a
    failure is a StoreError saying why `while {what}`"""
    # cp -a of "source/." copies the directory's contents and its own metadata;
    # --reflink=auto shares data blocks where the filesystem can
    proc = subprocess.run(["cp", "-a", "--reflink=auto", "--", os.path.join(os.fspath(source), "."),
                           os.fspath(target)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StoreError(cp_problem(proc.stderr, what))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _valid_id(object_id: str) -> bool:
    """An id that names one entry of a folder (a ref, an output's folder)"""
    return bool(object_id) and "/" not in object_id and not object_id.startswith(".")


def _write_record(folder: str, name: str, text: str) -> None:
    """FOLDER/NAME holds `text`, replaced with one rename"""
    temp = os.path.join(folder, f".{name}.{os.getpid()}")
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temp, os.path.join(folder, name))


def _link(source: str, target: str) -> bool:
    """Hard-link `source` as `target`; False where links cannot be made"""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


def _link_target(ref: str) -> Optional[str]:
    """The object name a ref points to, or None"""
    try:
        return os.path.basename(os.readlink(ref))
    except OSError:
        return None


def link_output(cache: str, object_id: str, path: str) -> bool:
    """Hard-link the top-level files of `path` (the committed output of
    stage `object_id`) into CACHE/outputs/OBJECT_ID/, if the module whose
    cache folder CACHE is made `outputs/` there: it may then read what it
    wrote before (oci-archive reuses compressed pieces of earlier images)
    without keeping a copy.

    The folder is the module's, so nothing in it is trusted: every step
    works on file descriptors opened without following links, and the new
    folder appears with one rename. False if nothing was linked."""
    if not _valid_id(object_id):
        return False
    try:
        outputs = os.open(os.path.join(cache, "outputs"), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # not asked for (or no cache)
    temp = f".{object_id}.{os.getpid()}"
    try:
        os.mkdir(temp, 0o755, dir_fd=outputs)
        folder = os.open(temp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=outputs)
        try:
            for entry in os.scandir(path):
                if entry.is_file(follow_symlinks=False):
                    os.link(entry.path, entry.name, dst_dir_fd=folder)
        finally:
            os.close(folder)
        _remove_at(outputs, object_id)
        os.rename(temp, object_id, src_dir_fd=outputs, dst_dir_fd=outputs)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            _remove_at(outputs, temp)
        return False
    finally:
        os.close(outputs)


def _remove_at(parent: int, name: str) -> None:
    """Remove the folder `name` in the folder open as `parent` and the
    files in it, never following a link; nothing if it does not exist"""
    try:
        folder = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return
    except OSError:
        os.unlink(name, dir_fd=parent)  # a file or a link where a folder should be
        return
    try:
        for entry in os.listdir(folder):
            os.unlink(entry, dir_fd=folder)
    finally:
        os.close(folder)
    os.rmdir(name, dir_fd=parent)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


class ObjectStore:
    """A store directory with objects/, refs/ and tmp/

    Every folder a build works in lives in tmp/ as a `LockedDir`: opening a
    store removes what dead builds left there (`sweep`), never the work of
    a running one. A build runs in a `session`, whose folder also lists the
    refs and objects the build uses: `trim` (for --cache-max-size) keeps
    those of every running build.
    """

    def __init__(self, path: PathLike):
        self.path = os.path.abspath(os.fspath(path))
        self.objects = os.path.join(self.path, "objects")
        self.refs = os.path.join(self.path, "refs")
        self.tmp = os.path.join(self.path, "tmp")
        self.sources = os.path.join(self.path, "sources")
        self.sizes = os.path.join(self.path, "sizes")
        self.stamps = os.path.join(self.path, "stamps")
        self.cache = os.path.join(self.path, "cache")
        for folder in (self.objects, self.refs, self.tmp, self.sources, self.sizes, self.stamps):
            os.makedirs(folder, exist_ok=True)
        self.swept = sweep(self.tmp, "")
        self._session: Optional[LockedDir] = None

    def module_cache(self, module: str) -> Optional[str]:
        """STORE/cache/MODULE: what a module keeps between builds (None if it cannot be made)

        Each module sees only its own folder; what is there is a cache: a
        module must check what it reads (the store never trusts it), and
        --cache-max-size counts it.
        """
        path = os.path.join(self.cache, module)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            return None
        return path

    def offer_output(self, module: str, object_id: str, path: str) -> bool:
        """Link the committed output `path` of stage `object_id` into the
        cache of `module`, if it asked for it (see `link_output`)"""
        return link_output(os.path.join(self.cache, module), object_id, path)

    # --- who uses what -----------------------------------------------------

    @contextlib.contextmanager
    def _store_lock(self, exclusive: bool) -> Iterator[None]:
        """Shared: a build records a use; exclusive: trim decides what goes"""
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def session(self) -> Iterator[str]:
        """The folder a build works in; what it uses is kept by `trim` while it lasts"""
        if self._session is not None:
            raise RuntimeError("store: one session at a time")
        self._session = LockedDir(self.tmp, SESSION_PREFIX)
        try:
            yield self._session.path
        finally:
            self._session.close()
            self._session = None

    def _use(self, *names: str) -> None:
        """Record (before looking) that this session uses these refs / objects"""
        if self._session is None:
            return
        with self._store_lock(exclusive=False):
            with open(os.path.join(self._session.path, USES), "a", encoding="utf-8") as f:
                f.write("".join(f"{name}\n" for name in names))

    # --- objects and refs ----------------------------------------------------

    def contains(self, object_id: Optional[str]) -> bool:
        return object_id is not None and self.resolve(object_id) is not None

    def resolve(self, object_id: str) -> Optional[str]:
        """The path of the object that `refs/<object_id>` names, or None
        (also when a file of it was changed in place: see `stamp`)"""
        if not _valid_id(object_id):
            return None
        self._use(object_id)
        ref = os.path.join(self.refs, object_id)
        try:
            target = os.readlink(ref)
        except OSError:
            return None
        path = os.path.normpath(os.path.join(self.refs, target))
        if os.path.dirname(path) != self.objects or not os.path.isdir(path):
            return None
        if not self._stamp_holds(os.path.basename(path)):
            return None
        try:
            os.utime(ref, follow_symlinks=False)  # last used: what --cache-max-size keeps longest
        except OSError:
            pass  # a read-only store still serves
        return path

    # --- stamps: an exported file shares its inode with the store's --------------

    @staticmethod
    def stamp(path: str) -> Dict[str, List[int]]:
        """What identifies the top-level files of an object: inode, size,
        mtime, mode and owner; a write or chmod through any name changes it"""
        stamp = {}
        for entry in os.scandir(path):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                stamp[entry.name] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid]
        return stamp

    def _write_stamp(self, name: str, stamp: Dict[str, List[int]]) -> None:
        _write_record(self.stamps, name, json.dumps(stamp, sort_keys=True))

    def _read_stamp(self, name: str) -> Any:
        """The recorded stamp of object `name`; None if it has none (an older store)"""
        try:
            with open(os.path.join(self.stamps, name), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _stamp_holds(self, name: str) -> bool:
        """False when a top-level file of object `name` is not what was committed"""
        recorded = self._read_stamp(name)
        if recorded is None:
            return True  # an object of an older store: never exported by hard link
        try:
            return bool(self.stamp(os.path.join(self.objects, name)) == recorded)
        except OSError:
            return False

    @contextlib.contextmanager
    def tempdir(self, prefix: str = "tmp-") -> Iterator[str]:
        """A private directory in tmp/, removed with everything in it at the end"""
        with LockedDir(self.tmp, prefix) as work:
            yield work.path

    def new_tree(self, workdir: str, base_id: Optional[str]) -> str:
        """A fresh tree in `workdir`: empty, or a copy of object `base_id`"""
        path = tempfile.mkdtemp(prefix="tree-", dir=workdir)
        os.chmod(path, 0o755)
        if base_id:
            base = self.resolve(base_id)
            if base is None:
                raise KeyError(f"object {base_id} is not in the store")
            copy_tree(base, path, f"copying the tree of stage {base_id} to build on it")
        return path

    def commit(self, tree: str, object_id: str, move: bool = False) -> str:
        """Store `tree` under refs/<object_id>; with `move` the tree itself is
        taken (it must be on the store's filesystem), otherwise copied.

        The object gets a random name: nothing reads the tree again to name
        it (an output of gigabytes would cost a second pass)."""
        self._use(object_id)
        name = os.urandom(32).hex()
        self._use(name)  # before it appears: trim keeps it
        final = os.path.join(self.objects, name)
        with LockedDir(self.tmp, "commit-") as work:
            if move:
                staged = tree
            else:
                staged = os.path.join(work.path, "object")
                os.mkdir(staged, 0o755)
                copy_tree(tree, staged, f"storing the tree of stage {object_id}")
            self._write_size(name, folder_size(staged))
            self._write_stamp(name, self.stamp(staged))
            os.rename(staged, final)
            _fsync_dir(self.objects)
            ref = os.path.join(self.refs, object_id)
            replaced = _link_target(ref)
            link = os.path.join(work.path, "ref")
            os.symlink(os.path.join("..", "objects", name), link)
            os.replace(link, ref)
            _fsync_dir(self.refs)
            if replaced and not self._stamp_holds(replaced):
                # changed in place through an exported name: useless to anyone
                self._drop(replaced, work.path)
        return final

    def _drop(self, name: str, workdir: str) -> None:
        """Remove object `name` (its size and stamp too); it vanishes with one rename"""
        try:
            os.rename(os.path.join(self.objects, name), os.path.join(workdir, name))
        except OSError:
            return
        _remove(os.path.join(self.sizes, name))
        _remove(os.path.join(self.stamps, name))
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)

    def _write_size(self, name: str, size: int) -> None:
        _write_record(self.sizes, name, str(size))

    def object_size(self, name: str) -> int:
        """Bytes object `name` takes on disk (recorded at commit, else measured)"""
        try:
            with open(os.path.join(self.sizes, name), encoding="utf-8") as f:
                return int(f.read())
        except (OSError, ValueError):
            size = folder_size(os.path.join(self.objects, name))
            self._write_size(name, size)
            return size

    def export(self, object_id: str, destination: PathLike) -> List[str]:
        """Put the contents of an object into `destination`; each top-level
        entry appears there with one rename, so nothing is ever partial.

        A top-level regular file is hard-linked when the destination is on
        the store's filesystem (no copy of a large image); the object's stamp
        then notices if it is changed in place through the exported name, and
        the store stops serving that object. Everything else is copied.
        Staging folders that killed exports left there are removed first."""
        source = self.resolve(object_id)
        if source is None:
            raise KeyError(f"object {object_id} is not in the store")
        destination = os.fspath(destination)
        os.makedirs(destination, exist_ok=True)
        sweep(destination, EXPORT_PREFIX)
        same_fs = os.stat(destination).st_dev == os.stat(source).st_dev
        object_name = os.path.basename(source)
        if same_fs and self._read_stamp(object_name) is None:
            self._write_stamp(object_name, self.stamp(source))  # an object of an older store
        exported = []
        for name in sorted(os.listdir(source)):
            path = os.path.join(source, name)
            with LockedDir(destination, EXPORT_PREFIX) as staging:
                staged = os.path.join(staging.path, name)
                if not (same_fs and stat.S_ISREG(os.lstat(path).st_mode) and _link(path, staged)):
                    proc = subprocess.run(["cp", "-a", "--reflink=auto", "--", path, staging.path],
                                          capture_output=True, text=True, check=False)
                    if proc.returncode != 0:
                        raise ExportError(export_problem(proc.stderr, name, destination))
                target = os.path.join(destination, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                os.replace(staged, target)
            exported.append(name)
        _fsync_dir(destination)
        return exported

    # --- a bounded store -------------------------------------------------------

    def trim(self, max_size: int) -> Tuple[List[str], int]:
        """Remove objects and module cache entries, least recently used first,
        until all fit in `max_size` bytes; what a running build (this one
        included) uses stays. Refs go before their objects. (removed, size after)"""
        with self._store_lock(exclusive=True):
            used = self._used_by_running_builds()
            candidates, refs, linked = self._trim_candidates(used)
            total = sum(c[3] for c in candidates)
            removed = []
            with LockedDir(self.tmp, "trim-") as work:
                for _, kind, name, size in sorted(candidates):
                    if total <= max_size:
                        break
                    if kind == "cache":
                        _remove(name)
                    elif name in used:
                        continue
                    else:
                        for ref in refs.get(name, []):
                            _remove(os.path.join(self.refs, ref))
                        _fsync_dir(self.refs)
                        for path in linked.get(name, []):
                            _remove(path)
                        self._drop(name, work.path)
                    total -= size
                    removed.append(name)
        return removed, total

    def _trim_candidates(self, used: Set[str]) -> Tuple[List[Tuple[float, str, str, int]],
                                                        Dict[str, List[str]], Dict[str, List[str]]]:
        """What trim may remove: (last used, kind, name or path, bytes); the
        refs of each object; the module cache files that are links of an
        object's files (an output a module keeps, see offer_output), counted
        and removed with that object. Objects used by a ref in `used` are
        added to it."""
        refs: Dict[str, List[str]] = {}
        last_used: Dict[str, float] = {}
        for ref in os.listdir(self.refs):
            path = os.path.join(self.refs, ref)
            try:
                name = os.path.basename(os.readlink(path))
                when = os.lstat(path).st_mtime
            except OSError:
                continue
            refs.setdefault(name, []).append(ref)
            last_used[name] = max(last_used.get(name, 0.0), when)
            if ref in used:
                used.add(name)
        names = [name for name in os.listdir(self.objects) if not name.startswith(".")]
        owner = {ino: name for name in names for ino in self._stamped_inodes(name)}
        linked: Dict[str, List[str]] = {}
        candidates = [(last_used.get(name, 0.0), "object", name, self.object_size(name)) for name in names]
        for entry in self._cache_entries():
            if entry[4] in owner:
                linked.setdefault(owner[entry[4]], []).append(entry[2])
            else:
                candidates.append(entry[:4])
        return candidates, refs, linked

    def _stamped_inodes(self, name: str) -> List[int]:
        """The inodes of the top-level files of object `name`, from its stamp"""
        try:
            return [fields[0] for fields in (self._read_stamp(name) or {}).values()]
        except (TypeError, IndexError, AttributeError):
            return []

    def _used_by_running_builds(self) -> Set[str]:
        used: Set[str] = set()
        for folder in live_dirs(self.tmp, SESSION_PREFIX):
            try:
                with open(os.path.join(folder, USES), encoding="utf-8") as f:
                    used.update(f.read().split())
            except OSError:
                continue
        return used

    def _cache_entries(self) -> List[Tuple[float, str, str, int, int]]:
        """(last used, "cache", path, bytes, inode) of every module cache file"""
        entries = []
        for dirpath, _, filenames in os.walk(self.cache):
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                entries.append((st.st_mtime, "cache", path, st.st_blocks * 512, st.st_ino))
        return entries


class ExportError(OSError):
    """An output could not be copied to the output directory"""


def cp_problem(stderr: str, what: str) -> str:
    """One line from cp's complaint: what happened, while doing what"""
    lines = [line for line in stderr.strip().splitlines() if line]
    reason = lines[-1].rsplit(": ", 1)[-1] if lines else "cp failed"
    reason = reason[:1].lower() + reason[1:]
    return f"{reason} while {what}"


def export_problem(stderr: str, name: str, destination: str) -> str:
    """One line from cp's complaint: what happened, to what, where"""
    return cp_problem(stderr, f"exporting {name} to {destination}")


class StoreServer(jsoncomm.Service):
    """The store API for input modules: read-tree and mkdtemp"""

    def __init__(self, store: ObjectStore, workdir: str, socket_dir: str):
        super().__init__(os.path.join(socket_dir, "store-api"))
        self.store = store
        self.workdir = workdir

    def dispatch(self, msg: Any, fds: jsoncomm.FdSet) -> Tuple[Any, List[int]]:
        method = msg.get("method") if isinstance(msg, dict) else None
        if method == "read-tree":
            return {"path": self.store.resolve(str(msg.get("tree") or ""))}, []
        if method == "mkdtemp":
            prefix = os.path.basename(str(msg.get("prefix") or "tmp-"))
            path = tempfile.mkdtemp(prefix=prefix, dir=self.workdir)
            os.chmod(path, 0o755)
            return {"path": path}, []
        return {"error": f"unknown method {method!r}"}, []


class StoreClient:
    """Talks to a StoreServer"""

    def __init__(self, connect_to: str):
        self.path = connect_to

    def _call(self, msg: Dict[str, Any]) -> Dict[str, Any]:
        with jsoncomm.Socket.new_client(self.path) as client:
            client.send(msg)
            reply, fds = client.recv()
            fds.close()
        if not isinstance(reply, dict) or "error" in reply:
            raise RuntimeError(f"store: {msg.get('method')}: {reply}")
        return reply

    def read_tree(self, object_id: str) -> Optional[str]:
        path: Optional[str] = self._call({"method": "read-tree", "tree": object_id})["path"]
        return path

    def mkdtemp(self, prefix: str = "tmp-") -> str:
        path: str = self._call({"method": "mkdtemp", "prefix": prefix})["path"]
        return path
