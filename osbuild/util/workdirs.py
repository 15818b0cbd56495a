"""Work folders that say whether their owner is alive: an flock on the folder

A build makes its temporary folders (in the store's tmp/, in /run, next to
exported files) with `LockedDir`: the folder is made under a `.new-` name,
locked with flock(2) on a descriptor the build keeps open, and only then
renamed to its real name. The kernel drops the lock when the process dies,
however it dies (SIGKILL included), so `sweep` run by a later build can
tell the work of dead builds (a lock it can take) from the work of running
ones (a lock it cannot take), and removes only the former.
"""

import fcntl
import os
import shutil
import stat
import tempfile
import time
from typing import List, Optional, Tuple

NEW = ".new-"
# a folder still under its .new- name this long was left by a process that
# died between making and locking it
NEW_GRACE = 60.0


def _lock(path: str, blocking: bool) -> Optional[int]:
    """An open descriptor of `path` holding its exclusive lock, or None if it is taken"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


class LockedDir:
    """A private folder in `parent`, locked for as long as it exists"""

    def __init__(self, parent: str, prefix: str):
        staged = tempfile.mkdtemp(prefix=NEW + prefix, dir=parent)
        fd = _lock(staged, blocking=True)
        if fd is None:
            shutil.rmtree(staged, ignore_errors=True)
            raise OSError(f"cannot lock the work folder {staged}")
        self.fd = fd
        self.path = os.path.join(parent, os.path.basename(staged)[len(NEW):])
        os.rename(staged, self.path)

    def close(self) -> None:
        """Remove the folder, then let go of its lock"""
        if self.fd < 0:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "LockedDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def folder_size(path: str) -> int:
    """Bytes on disk under `path` (hard links once)"""
    total = 0
    seen = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def sweep(parent: str, prefix: str) -> Tuple[int, int]:
    """Remove the folders `prefix*` in `parent` whose owners are gone; (count, bytes)"""
    try:
        names = os.listdir(parent)
    except OSError:
        return 0, 0
    count = size = 0
    now = time.time()
    for name in names:
        path = os.path.join(parent, name)
        if name.startswith(NEW + prefix) or not name.startswith(prefix):
            fresh = True
            if name.startswith(NEW + prefix):
                try:
                    fresh = now - os.lstat(path).st_mtime < NEW_GRACE
                except OSError:
                    pass
            if fresh:
                continue
        if not os.path.isdir(path) or os.path.islink(path):
            # not a work folder: a stray file, only where everything is ours
            if prefix == "" and now - os.lstat(path).st_mtime >= NEW_GRACE:
                os.unlink(path)
                count += 1
            continue
        fd = _lock(path, blocking=False)
        if fd is None:
            continue  # alive (or not a folder of ours)
        try:
            size += folder_size(path)
            shutil.rmtree(path, ignore_errors=True)
            count += 1
        finally:
            os.close(fd)
    return count, size


def live_dirs(parent: str, prefix: str) -> List[str]:
    """The folders `prefix*` in `parent` that a running process holds"""
    live = []
    for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        if not name.startswith(prefix):
            continue
        path = os.path.join(parent, name)
        fd = _lock(path, blocking=False)
        if fd is None:
            if os.path.isdir(path):
                live.append(path)
        else:
            os.close(fd)
    return live
