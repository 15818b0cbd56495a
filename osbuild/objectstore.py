"""The object store: committed trees by content, named by stage id

Layout of a store directory:
- `objects/<hash>`: a committed tree (or assembler output), named by the
  content hash of the tree (`treesum`); never changed once there;
- `refs/<id>`: a symlink `../objects/<hash>` naming the object a stage (or
  pipeline) with that id produced;
- `tmp/`: work in progress; nothing there is ever visible under `refs/`.

Everything becomes visible with one rename: an object is built in `tmp/`,
renamed into `objects/`, then a symlink made in `tmp/` is renamed over
`refs/<id>`. A crash leaves at most an unreferenced temporary behind.

`StoreServer` / `StoreClient` let input modules (run as separate programs)
ask for the path of a tree by id. Standard library only.
"""

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .util import jsoncomm
from .util.types import PathLike

READ_CHUNK = 1024 * 1024


def treesum(path: PathLike) -> str:
    """sha256 over a tree: names, types, modes, owners, mtimes, xattrs, data, links"""
    digest = hashlib.sha256()
    inodes: Dict[Tuple[int, int], str] = {}

    def feed(*fields: Any) -> None:
        for field in fields:
            data = field if isinstance(field, bytes) else str(field).encode("utf-8", "surrogateescape")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)

    def visit(full: bytes, rel: bytes) -> None:
        st = os.lstat(full)
        feed(rel, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
        try:
            names = sorted(os.listxattr(full, follow_symlinks=False))
        except OSError:
            names = []
        for name in names:
            feed(name, os.getxattr(full, name, follow_symlinks=False))
        if stat.S_ISDIR(st.st_mode):
            for entry in sorted(os.listdir(full)):
                visit(os.path.join(full, entry), rel + b"/" + entry)
        elif stat.S_ISLNK(st.st_mode):
            feed(os.readlink(full))
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            feed(st.st_rdev)
        elif stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in inodes:
                    feed("hardlink", inodes[key])
                    return
                inodes[key] = rel.decode("utf-8", "surrogateescape")
            file_hash = hashlib.sha256()
            with open(full, "rb") as f:
                while True:
                    chunk = f.read(READ_CHUNK)
                    if not chunk:
                        break
                    file_hash.update(chunk)
            feed(file_hash.digest())

    visit(os.fsencode(path), b"")
    return digest.hexdigest()


def copy_tree(source: PathLike, target: PathLike) -> None:
    """Copy the contents of `source` into the existing directory `target`,
    keeping everything (owners, modes, xattrs, hard links, devices)"""
    # cp -a of "source/." copies the directory's contents and its own metadata;
    # --reflink=auto shares data blocks where the filesystem can
    subprocess.run(["cp", "-a", "--reflink=auto", "--", os.path.join(os.fspath(source), "."),
                    os.fspath(target)], check=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


class ObjectStore:
    """A store directory with objects/, refs/ and tmp/"""

    def __init__(self, path: PathLike):
        self.path = os.path.abspath(os.fspath(path))
        self.objects = os.path.join(self.path, "objects")
        self.refs = os.path.join(self.path, "refs")
        self.tmp = os.path.join(self.path, "tmp")
        self.sources = os.path.join(self.path, "sources")
        for folder in (self.objects, self.refs, self.tmp, self.sources):
            os.makedirs(folder, exist_ok=True)

    def contains(self, object_id: Optional[str]) -> bool:
        return object_id is not None and self.resolve(object_id) is not None

    def resolve(self, object_id: str) -> Optional[str]:
        """The path of the object that `refs/<object_id>` names, or None"""
        if not object_id or "/" in object_id or object_id.startswith("."):
            return None
        ref = os.path.join(self.refs, object_id)
        try:
            target = os.readlink(ref)
        except OSError:
            return None
        path = os.path.normpath(os.path.join(self.refs, target))
        if os.path.dirname(path) != self.objects or not os.path.isdir(path):
            return None
        return path

    @contextlib.contextmanager
    def tempdir(self, prefix: str = "tmp-") -> Iterator[str]:
        """A private directory in tmp/, removed with everything in it at the end"""
        path = tempfile.mkdtemp(prefix=prefix, dir=self.tmp)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def new_tree(self, workdir: str, base_id: Optional[str]) -> str:
        """A fresh tree in `workdir`: empty, or a copy of object `base_id`"""
        path = tempfile.mkdtemp(prefix="tree-", dir=workdir)
        os.chmod(path, 0o755)
        if base_id:
            base = self.resolve(base_id)
            if base is None:
                raise KeyError(f"object {base_id} is not in the store")
            copy_tree(base, path)
        return path

    def commit(self, tree: str, object_id: str, move: bool = False) -> str:
        """Store `tree` under refs/<object_id>; with `move` the tree itself is
        taken (it must be on the store's filesystem), otherwise copied"""
        name = treesum(tree)
        final = os.path.join(self.objects, name)
        if not os.path.isdir(final):
            if move:
                staged = tree
            else:
                staged = tempfile.mkdtemp(prefix="object-", dir=self.tmp)
                os.chmod(staged, 0o755)
                copy_tree(tree, staged)
            try:
                os.rename(staged, final)
            except OSError:
                if not os.path.isdir(final):  # not a concurrent commit of the same tree
                    raise
                _remove(staged)
            _fsync_dir(self.objects)
        elif move:
            _remove(tree)
        link = os.path.join(self.tmp, f".ref-{object_id}-{os.getpid()}")
        _remove(link)
        os.symlink(os.path.join("..", "objects", name), link)
        os.replace(link, os.path.join(self.refs, object_id))
        _fsync_dir(self.refs)
        return final

    def export(self, object_id: str, destination: PathLike) -> List[str]:
        """Copy the contents of an object into `destination`; each top-level
        entry appears there with one rename, so nothing is ever partial"""
        source = self.resolve(object_id)
        if source is None:
            raise KeyError(f"object {object_id} is not in the store")
        destination = os.fspath(destination)
        os.makedirs(destination, exist_ok=True)
        exported = []
        for name in sorted(os.listdir(source)):
            staging = tempfile.mkdtemp(prefix=f".{name[:100]}-", dir=destination)
            try:
                subprocess.run(["cp", "-a", "--reflink=auto", "--", os.path.join(source, name), staging],
                               check=True)
                target = os.path.join(destination, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                os.replace(os.path.join(staging, name), target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            exported.append(name)
        _fsync_dir(destination)
        return exported


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
