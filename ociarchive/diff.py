"""A difference layer: what changed from one tree to the next, as a tar stream with OCI whiteouts

Two trees are walked side by side. A path of the new tree goes into the
layer when it is new or differs from the old one in type, mode, owner,
mtime (as the layer stores it: clamped to the source epoch), size, device
number, link target, the extended attributes an image keeps, or content
(compared byte for byte when everything else is equal). A path of the old
tree that the new one lacks gets a whiteout, `.wh.NAME`, in its parent; a
path that changed type gets one too (before its new self) and, for a new
directory, everything below it. Every name of a hard-linked file goes in
when one does, so links stay whole; the directories above every entry are
in the layer with their metadata from the new tree. GNU tar writes the
entries (the same flags as for a whole tree), the whiteouts come first in
the stream, made here.
"""

import os
import stat
from typing import Dict, List, Optional, Set, Tuple

from .tarstream import LAYER_XATTRS, layer_tar_argv, tar_member

WHITEOUT = b".wh."
READ = 1024 * 1024


def kept_xattrs(path: bytes) -> Dict[bytes, bytes]:
    """The extended attributes of `path` that the layer keeps (LAYER_XATTRS)"""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        if any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in LAYER_XATTRS):
            try:
                out[name.encode()] = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
    return out


def same_content(a: bytes, b: bytes) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(READ), fb.read(READ)
            if x != y:
                return False
            if not x:
                return True


class TreeDiff:
    """The paths that changed from tree `old` to tree `new` (both folders), and those removed"""

    def __init__(self, old: str, new: str, source_epoch: Optional[int]):
        self.old = os.fsencode(os.path.abspath(old))
        self.new = os.fsencode(os.path.abspath(new))
        self.epoch_ns = None if source_epoch is None else source_epoch * 1_000_000_000
        self.changed: Set[bytes] = set()  # paths of the new tree, b"" the root
        self.removed: Set[bytes] = set()  # paths of the old tree that get a whiteout
        self.links: Dict[Tuple[int, int], List[bytes]] = {}  # the names of hard-linked files of the new tree
        self._compare(b"")
        self._whole_links()

    def _mtime(self, st: os.stat_result) -> int:
        return st.st_mtime_ns if self.epoch_ns is None else min(st.st_mtime_ns, self.epoch_ns)

    def _differs(self, rel: bytes, a: os.stat_result, b: os.stat_result) -> bool:
        """Whether the entry at `rel` differs between the trees (both of the same type)"""
        old, new = os.path.join(self.old, rel), os.path.join(self.new, rel)
        if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid) or self._mtime(a) != self._mtime(b) \
                or kept_xattrs(old) != kept_xattrs(new):
            return True
        if stat.S_ISLNK(b.st_mode):
            changed = os.readlink(old) != os.readlink(new)
        elif stat.S_ISCHR(b.st_mode) or stat.S_ISBLK(b.st_mode):
            changed = a.st_rdev != b.st_rdev
        elif stat.S_ISREG(b.st_mode):
            changed = a.st_size != b.st_size or (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) \
                and not same_content(old, new)
        else:
            changed = False
        return changed

    def _note_link(self, rel: bytes, st: os.stat_result) -> None:
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            self.links.setdefault((st.st_dev, st.st_ino), []).append(rel)

    def _added(self, rel: bytes, st: os.stat_result) -> None:
        """A path new in the new tree: it, and everything below it"""
        self.changed.add(rel)
        self._note_link(rel, st)
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(os.path.join(self.new, rel))):
                child = rel + b"/" + name if rel else name
                self._added(child, os.lstat(os.path.join(self.new, child)))

    def _compare(self, rel: bytes) -> None:
        """Compare the directory `rel` of both trees (it is a directory in both)"""
        old_dir, new_dir = os.path.join(self.old, rel), os.path.join(self.new, rel)
        if rel == b"" and self._differs(rel, os.lstat(old_dir), os.lstat(new_dir)):
            self.changed.add(rel)
        old_names, new_names = set(os.listdir(old_dir)), set(os.listdir(new_dir))
        for name in sorted(old_names - new_names):
            self.removed.add(rel + b"/" + name if rel else name)
        for name in sorted(new_names):
            child = rel + b"/" + name if rel else name
            st = os.lstat(os.path.join(self.new, child))
            if name not in old_names:
                self._added(child, st)
                continue
            before = os.lstat(os.path.join(self.old, child))
            if stat.S_IFMT(before.st_mode) != stat.S_IFMT(st.st_mode):
                self.removed.add(child)  # its old self goes, its new self comes
                self._added(child, st)
                continue
            self._note_link(child, st)
            if self._differs(child, before, st):
                self.changed.add(child)
            if stat.S_ISDIR(st.st_mode):
                self._compare(child)

    def _whole_links(self) -> None:
        """Every name of a hard-linked file in the layer when one is"""
        for names in self.links.values():
            if any(name in self.changed for name in names):
                self.changed.update(names)

    def entries(self) -> List[bytes]:
        """The paths the layer holds, parents first and siblings by name (tar's --sort=name order)"""
        wanted = set(self.changed)
        for path in list(self.changed) + list(self.removed):
            parent = path
            while parent:
                parent = parent.rpartition(b"/")[0]
                wanted.add(parent)
        return sorted(wanted, key=lambda p: p.split(b"/") if p else [])

    def whiteouts(self) -> List[bytes]:
        """The whiteout entries' paths (b"etc/.wh.motd"), sorted"""
        out = []
        for path in self.removed:
            parent, _, name = path.rpartition(b"/")
            out.append((parent + b"/" if parent else b"") + WHITEOUT + name)
        return sorted(out, key=lambda p: p.split(b"/"))


def whiteout_headers(paths: List[bytes], mtime: int) -> bytes:
    """Tar entries (no end-of-archive) for whiteouts: empty files owned by 0:0, mode 0644"""
    return b"".join(tar_member(os.fsdecode(b"./" + path), 0, mtime, errors="surrogateescape") for path in paths)


def diff_tar_argv(new: str, listing: str, source_epoch: Optional[int]) -> List[str]:
    """GNU tar writing exactly the listed entries of `new`, with the flags of a whole tree's layer"""
    argv = layer_tar_argv(new, source_epoch)[:-1]  # all but the "." of the whole tree
    return [*argv, "--no-recursion", "--null", "--verbatim-files-from", f"--files-from={listing}"]
