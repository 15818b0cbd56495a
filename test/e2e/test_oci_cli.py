"""osbuild-oci as a user runs it: installed on PATH, against the engine's build, Ctrl-C, permissions"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from test.conftest import REPO
from test.e2e.conftest import debtree, oci, require_tools, run, umoci_unpack

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root]
EPOCH = 1700000000


def command(*argv, **kwargs):
    """The command as installed (the README's `pip install .`), else this checkout's"""
    installed = shutil.which("osbuild-oci")
    base = [installed] if installed else [sys.executable, "-m", "osbuild.oci_cli"]
    return subprocess.run([*base, *argv], capture_output=True, text=True, check=False, timeout=600,
                          env=dict(os.environ, PYTHONPATH=REPO), **kwargs)


def test_installed_command_is_on_path():
    require_tools("osbuild-oci")
    proc = subprocess.run(["osbuild-oci", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "ROOTFS" in proc.stdout


@pytest.mark.parametrize("options", [{}, {"layers": {"max": 6}, "tag": "debtree:1"}])
def test_command_and_engine_make_the_same_archive(osbuild, tmp_path, options):
    require_tools("umoci")
    manifest = {"pipeline": {"stages": [debtree()], "assembler": oci(**{"source-epoch": EPOCH, **options})}}
    proc = osbuild(manifest)
    assert proc.returncode == 0, proc.stderr
    tree = osbuild.tree(manifest)
    flags = ["--layers", "6", "--tag", "debtree:1"] if options else []
    out = tmp_path / "cmd.tar"
    done = command(tree, "-o", str(out), "--architecture", "amd64", "--source-epoch", str(EPOCH), *flags)
    assert done.returncode == 0, done.stderr
    with open(out, "rb") as a, open(os.path.join(osbuild.output, "image.tar"), "rb") as b:
        assert a.read() == b.read()
    if options:
        rootfs = umoci_unpack(str(out), "debtree:1", str(tmp_path / "umoci"))
        assert os.stat(os.path.join(rootfs, "dev", "sda")).st_rdev == os.makedev(8, 0)


def test_ctrl_c_in_the_middle_exits_130_and_leaves_nothing(tmp_path):
    require_tools("zstd")
    rootfs = tmp_path / "rootfs"
    os.makedirs(rootfs)
    # text that zstd -19 takes several seconds for
    subprocess.run(f"head -c 30000000 /dev/urandom | base64 > {rootfs}/data", shell=True, check=True)
    out = tmp_path / "out"
    os.makedirs(out)
    installed = shutil.which("osbuild-oci")
    base = [installed] if installed else [sys.executable, "-m", "osbuild.oci_cli"]
    proc = subprocess.Popen([*base, str(rootfs), "-o", str(out / "image.tar"), "--compression", "zstd",
                             "--level", "19", "--architecture", "amd64"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=REPO),
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not os.listdir(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(out), "the archive was begun"
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "osbuild-oci: interrupted (SIGINT)" in stderr and "Traceback" not in stderr
    assert os.listdir(out) == [], "nothing partial is left"
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-a", "-s", str(proc.pid)], capture_output=True, text=True, check=False)
    assert left.stdout == "", "no tar or compressor outlives the command"


def test_a_folder_the_user_cannot_read():
    require_tools("setpriv")
    base = tempfile.mkdtemp(prefix="oci-cli-", dir="/var/tmp")  # a place the user can reach
    try:
        os.chmod(base, 0o755)
        rootfs, out = os.path.join(base, "rootfs"), os.path.join(base, "out")
        os.makedirs(os.path.join(rootfs, "secret"))
        os.chmod(rootfs, 0o700)
        os.makedirs(out)
        os.chmod(out, 0o777)
        # the command's code where that user can read it (a checkout may sit in a private folder)
        code = os.path.join(base, "code")
        for folder in ("osbuild", "ociarchive", "assemblers", "stages", "runners"):
            shutil.copytree(os.path.join(REPO, folder), os.path.join(code, folder),
                            ignore=shutil.ignore_patterns("__pycache__"))
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                  sys.executable, "-m", "osbuild.oci_cli", rootfs, "-o", os.path.join(out, "x.tar"),
                  "--architecture", "amd64"]
        env = dict(os.environ, PYTHONPATH=code, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run(nobody, capture_output=True, text=True, check=False, env=env, cwd="/")
        assert proc.returncode == 2, proc.stderr
        assert f"osbuild-oci: ROOTFS '{rootfs}': not readable" in proc.stderr
        # readable at the top, not below: tar says what it could not read, the build fails, nothing is left
        os.chmod(rootfs, 0o755)
        os.chmod(os.path.join(rootfs, "secret"), 0o700)
        proc = subprocess.run(nobody, capture_output=True, text=True, check=False, env=env, cwd="/")
        assert proc.returncode == 1, proc.stderr
        assert "secret" in proc.stderr and "osbuild-oci: error: create layer: tar exited with status 2" in proc.stderr
        assert os.listdir(out) == []
    finally:
        shutil.rmtree(base)


def test_debootstrap_folder_pulls_with_podman(tmp_path):
    """A small folder straight to an image that podman pulls, named by --tag"""
    require_tools("podman")
    rootfs = tmp_path / "rootfs"
    os.makedirs(rootfs / "usr" / "bin")
    (rootfs / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho hello\n", encoding="utf-8")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "os-release").write_text("ID=test\n", encoding="utf-8")
    out = tmp_path / "image.tar"
    done = command(str(rootfs), "-o", str(out), "--tag", "localhost/cli-test:1", "--architecture", "amd64")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    run(["podman", "pull", "-q", f"oci-archive:{out}"])
    try:
        inspect = run(["podman", "image", "inspect", "--format", "{{.Architecture}}", "localhost/cli-test:1"])
        assert inspect.strip() == "amd64"
    finally:
        subprocess.run(["podman", "rmi", "-f", "localhost/cli-test:1"], capture_output=True, check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    rootfs = tmp_path / "rootfs"
    os.makedirs(rootfs)
    (rootfs / "big").write_bytes(os.urandom(5_000_000))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], check=True)
    try:
        done = command(str(rootfs), "-o", str(small / "x.tar"), "--architecture", "amd64")
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1] == "osbuild-oci: error: no space left on device while writing x.tar"
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
