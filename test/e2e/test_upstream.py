"""The assembler under the real upstream osbuild, 2021 (8ccc73d1) and today's (f6b23dbc)

Exactly what the README tells a user to do: copy `assemblers/org.osbuild.oci-archive`
and the `ociarchive/` folder into upstream's libdir, then build. Upstream's
own package runs the build (its `osbuild/` is the one on the Python path and
in the sandbox); the archive must be byte for byte what our engine makes of
the same manifest.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from osbuild.meta import host_os_release
from test.conftest import REPO
from test.e2e.conftest import debtree, oci, umoci_unpack

UPSTREAM = os.path.join(REPO, "test", "data", "upstream")
RELEASES = {"2021": "osbuild-8ccc73d1.tar.gz", "today": "osbuild-f6b23dbc.tar.gz"}
EPOCH = 1600000000

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.needs_bwrap]


def upstream(tmp_path, release):
    """An upstream osbuild unpacked, our assembler and package copied into its libdir; (libdir, argv)"""
    libdir = tmp_path / f"upstream-{release}"
    with tarfile.open(os.path.join(UPSTREAM, RELEASES[release])) as tar:
        tar.extractall(libdir)
    # the two paths the README names
    os.makedirs(libdir / "assemblers", exist_ok=True)
    shutil.copy2(os.path.join(REPO, "assemblers", "org.osbuild.oci-archive"), libdir / "assemblers")
    shutil.copytree(os.path.join(REPO, "ociarchive"), libdir / "ociarchive",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # what the test manifests use: the test stage that makes a tree
    os.makedirs(libdir / "stages", exist_ok=True)
    shutil.copy2(os.path.join(REPO, "test", "data", "stages", "org.osbuild.test.shell"), libdir / "stages")
    shutil.copy2(os.path.join(REPO, "test", "debtree.py"), libdir / "stages")
    # 2021's osbuild knows no Debian: the host's runner is its generic one
    release_info = host_os_release()
    host_runner = f"org.osbuild.{release_info.get('ID', '')}{release_info.get('VERSION_ID', '').replace('.', '')}"
    if release == "2021" and not os.path.exists(libdir / "runners" / host_runner):
        shutil.copy2(libdir / "runners" / "org.osbuild.linux", libdir / "runners" / host_runner)
    return str(libdir)


def build_upstream(tmp_path, release, manifest):
    """The archive upstream osbuild `release` builds of `manifest`; its path"""
    libdir = upstream(tmp_path, release)
    work = tmp_path / f"run-{release}"
    os.makedirs(work)
    path = work / "manifest.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    argv = [sys.executable, "-m", "osbuild", "--libdir", libdir, "--store", str(work / "store"),
            "--output-directory", str(work / "out"), str(path)]
    if release == "today":
        argv[-1:-1] = ["--export", "assembler"]  # today's osbuild exports only what it is asked to
    # upstream's package, never ours: its folder on the Python path, run from elsewhere
    env = dict(os.environ, PYTHONPATH=libdir)
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, f"upstream {release} failed:\n{proc.stdout}\n{proc.stderr}"
    check = subprocess.run([sys.executable, "-c", "import osbuild; print(osbuild.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True)
    assert check.stdout.startswith(libdir), "upstream's own osbuild package ran the build"
    out = work / "out" / ("assembler" if release == "today" else "") / "image.tar"
    return str(out)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


MANIFESTS = {
    "layered": {"pipeline": {"stages": [debtree()], "assembler": oci(**{
        "source-epoch": EPOCH, "tag": "debtree:1",
        "layers": {"paths": [{"name": "app", "paths": ["/opt/app"]}]}})}},
    "single": {"pipeline": {"stages": [debtree()], "assembler": oci(**{
        "source-epoch": EPOCH, "compression-level": 9, "tag": "debtree:1",
        "config": {"Cmd": ["/usr/bin/foo"], "StopSiganl": "SIGINT", "ExposedPorts": ["80"]}})}},
}


@pytest.mark.parametrize("release", sorted(RELEASES))
@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_upstream_builds_the_same_archive(osbuild, tmp_path, release, case):
    manifest = MANIFESTS[case]
    theirs = build_upstream(tmp_path, release, manifest)
    proc = osbuild(manifest)
    assert proc.returncode == 0, proc.stderr
    ours = os.path.join(osbuild.output, "image.tar")
    assert sha256(theirs) == sha256(ours), f"upstream {release} and this engine give other bytes"
    rootfs = umoci_unpack(theirs, "debtree:1", str(tmp_path / "umoci"))
    assert os.path.isfile(os.path.join(rootfs, "usr", "bin", "foo")), "the image holds the tree"
