"""Two trees and what changed between them, for the difference layers of the format-2 stage

As a script (for a test stage): `difftrees.py base|second TREE` makes that tree in TREE.
"""

import os
import shutil
import subprocess
import sys
import tempfile

EPOCH = 1600000000


def _file(root, path, data, mode=0o644):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)
    os.chmod(full, mode)


def _times(root):
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))


def make_base(root):
    _file(root, "etc/keep", b"kept\n")
    _file(root, "etc/gone", b"removed\n")
    _file(root, "dir/gone/a", b"a\n")
    _file(root, "dir/gone/sub/b", b"b\n")
    _file(root, "dir/stays", b"stays\n")
    _file(root, "links/a", b"linked\n")
    os.link(os.path.join(root, "links/a"), os.path.join(root, "links/b"))
    _file(root, "swap/dir2file/child", b"child\n")
    _file(root, "swap/file2dir", b"a file first\n")
    _file(root, "data/content", b"0123456789\n")
    _file(root, "data/mode", b"mode\n", 0o644)
    _file(root, "old/existing", b"old\n")
    os.symlink("keep", os.path.join(root, "etc/link"))
    _times(root)
    return root


def make_second(base, root):
    """A copy of `base` with: a file and a whole directory removed, one name of a hard link
    removed, a directory turned into a file and a file into a directory, one file's content
    changed (same size, same mtime), another's mode only, files added in new and old directories"""
    os.makedirs(root, exist_ok=True)
    subprocess.run(["cp", "-a", os.path.join(base, "."), root], check=True)
    os.unlink(os.path.join(root, "etc/gone"))
    shutil.rmtree(os.path.join(root, "dir/gone"))
    os.unlink(os.path.join(root, "links/b"))
    shutil.rmtree(os.path.join(root, "swap/dir2file"))
    _file(root, "swap/dir2file", b"now a file\n")
    os.unlink(os.path.join(root, "swap/file2dir"))
    _file(root, "swap/file2dir/child", b"now a directory\n")
    _file(root, "data/content", b"9876543210\n")
    os.chmod(os.path.join(root, "data/mode"), 0o600)
    _file(root, "old/added", b"added in an old directory\n")
    _file(root, "new/deep/added", b"added in a new directory\n")
    _times(root)
    return root


# what the second layer holds: every change, the directories above each, and the whiteouts
CHANGED = {"./data/content", "./data/mode", "./swap/dir2file", "./swap/file2dir/", "./swap/file2dir/child",
           "./old/added", "./new/", "./new/deep/", "./new/deep/added"}
PARENTS = {"./", "./data/", "./swap/", "./old/", "./etc/", "./dir/", "./links/"}
WHITEOUTS = {"./etc/.wh.gone", "./dir/.wh.gone", "./links/.wh.b", "./swap/.wh.dir2file", "./swap/.wh.file2dir"}
UNCHANGED = {"./etc/keep", "./etc/link", "./dir/stays", "./links/a", "./old/existing"}


if __name__ == "__main__":
    which, target = sys.argv[1], sys.argv[2]
    if which == "base":
        make_base(target)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            make_second(make_base(os.path.join(scratch, "base")), target)
