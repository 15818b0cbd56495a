"""The sandbox: run a module under bubblewrap in a build root

The build root is the host (its /usr) or the tree of a build pipeline; it is
mounted read-only, with fresh /dev, /proc, /tmp and /var/tmp, the libdir at
/run/osbuild/lib, the module at /run/osbuild/bin/NAME, and whatever the
caller binds (the tree at /run/osbuild/tree, inputs, the API socket dir).
The runner of the build root starts the module; its output is streamed line
by line to a callback as it comes.
"""

import importlib.util
import os
import shutil
import subprocess
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .util.types import PathLike

# capabilities a stage keeps (bwrap drops all others): enough to own, chmod,
# mknod, set file capabilities and read every file of a tree as root
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
    "CAP_LINUX_IMMUTABLE",
]

LIB_FOLDERS = ["stages", "assemblers", "inputs", "sources", "runners", "devices", "mounts"]
# our packages that modules import from the libdir's top (as upstream's
# modules import osbuild.util): the libdir's own copy, else the installed one
LIB_PACKAGES = ["ociarchive"]


class SandboxError(Exception):
    """The sandbox could not be set up"""


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _has_package(libdir: str, name: str = "osbuild") -> bool:
    path = os.path.join(libdir, name)
    return os.path.isdir(path) and bool(os.listdir(path))


def _installed_package(name: str) -> Optional[str]:
    """The folder of an importable package, found without importing it"""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def _setenv(env: Dict[str, str]) -> List[str]:
    """bwrap's arguments for the terminal type and `env` (SOURCE_DATE_EPOCH, ...)"""
    if os.environ.get("TERM"):
        env = {"TERM": os.environ["TERM"], **env}
    return [arg for key, value in sorted(env.items()) for arg in ("--setenv", key, value)]


class BuildRoot:
    """A build root to run modules in"""

    def __init__(self, root: PathLike, runner: str, libdir: PathLike):
        self.root = os.fspath(root)
        self.runner = runner
        self.libdir = os.path.abspath(os.fspath(libdir))
        if os.geteuid() != 0:
            raise SandboxError("building needs root: stages own files, make device nodes and set capabilities")
        if not shutil.which("bwrap"):
            raise SandboxError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        if not os.path.isfile(os.path.join(self.libdir, "runners", runner)):
            raise SandboxError(f"runner {runner!r} not found in {os.path.join(self.libdir, 'runners')}")

    def argv(self, module: str, binds: Sequence[Tuple[str, str]],
             readonly_binds: Sequence[Tuple[str, str]], env: Optional[Dict[str, str]] = None) -> List[str]:
        name = os.path.basename(module)
        cmd = [
            "bwrap",
            "--chdir", "/",
            "--die-with-parent",
            "--new-session",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--hostname", "osbuild",
            "--clearenv",
            "--cap-drop", "ALL",
        ]
        for cap in CAPABILITIES:
            cmd += ["--cap-add", cap]
        # the build root: its /usr, read-only, with the usual merged-/usr links
        usr = os.path.join(self.root, "usr")
        if not os.path.isdir(usr):
            raise SandboxError(f"build root {self.root} has no usr/ directory")
        cmd += ["--ro-bind", usr, "/usr"]
        for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            if os.path.isdir(os.path.join(usr, link)):
                cmd += ["--symlink", f"usr/{link}", f"/{link}"]
        cmd += [
            "--dev", "/dev",
            "--proc", "/proc",
            "--ro-bind", "/sys", "/sys",
            "--tmpfs", "/tmp",
            "--tmpfs", "/var/tmp",
            "--dir", "/etc",
        ]
        for etc in ("etc/containers", "etc/mke2fs.conf", "etc/passwd", "etc/group", "etc/nsswitch.conf"):
            cmd += ["--ro-bind-try", os.path.join(self.root, etc), "/" + etc]
        # the libdir; the running osbuild package when it holds none
        cmd += ["--tmpfs", "/run/osbuild/lib"]
        for folder in LIB_FOLDERS:
            path = os.path.join(self.libdir, folder)
            if os.path.isdir(path):
                cmd += ["--ro-bind", path, f"/run/osbuild/lib/{folder}"]
        package = os.path.join(self.libdir, "osbuild") if _has_package(self.libdir) else _package_dir()
        cmd += ["--ro-bind", package, "/run/osbuild/lib/osbuild"]
        for name in LIB_PACKAGES:
            found = os.path.join(self.libdir, name) if _has_package(self.libdir, name) else _installed_package(name)
            if found:
                cmd += ["--ro-bind", found, f"/run/osbuild/lib/{name}"]
        cmd += ["--remount-ro", "/run/osbuild/lib"]
        cmd += ["--ro-bind", module, f"/run/osbuild/bin/{name}"]
        for source, target in readonly_binds:
            cmd += ["--ro-bind", source, target]
        for source, target in binds:
            cmd += ["--bind", source, target]
        cmd += [
            "--setenv", "PATH", "/usr/sbin:/usr/bin",
            "--setenv", "PYTHONPATH", "/run/osbuild/lib",
            "--setenv", "PYTHONUNBUFFERED", "1",
            "--setenv", "HOME", "/root",
            "--setenv", "LC_ALL", "C.UTF-8",
        ]
        cmd += _setenv(env or {})
        cmd += [f"/run/osbuild/lib/runners/{self.runner}", f"/run/osbuild/bin/{name}"]
        return cmd

    def run(self, module: str, binds: Sequence[Tuple[str, str]] = (),
            readonly_binds: Sequence[Tuple[str, str]] = (),
            on_output: Optional[Callable[[str], None]] = None,
            env: Optional[Dict[str, str]] = None) -> Tuple[int, str]:
        """Run `module` in the sandbox (with `env` set too); returns (exit status, its output)"""
        argv = self.argv(module, binds, readonly_binds, env)
        output: List[str] = []
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as proc:
            assert proc.stdout is not None
            try:
                for raw in iter(proc.stdout.readline, b""):
                    line = raw.decode("utf-8", "replace")
                    output.append(line)
                    if on_output:
                        on_output(line)
            except BaseException:
                proc.kill()
                raise
            status = proc.wait()
        return status, "".join(output)
