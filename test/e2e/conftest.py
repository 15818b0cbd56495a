"""End-to-end fixtures: a libdir with the test stage, running the CLI as root

Requirements (root, bwrap, skopeo, umoci, podman) skip a test with the
reason; with OSBUILD_TEST_STRICT=1 (the test command sets it) a missing
requirement fails the test instead, so nothing is silently left out.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from test.conftest import REPO

STRICT = os.environ.get("OSBUILD_TEST_STRICT") == "1"


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if STRICT:
        pytest.fail(f"requirement missing (OSBUILD_TEST_STRICT=1): {reason}")
    pytest.skip(reason)


def require_tools(*tools: str) -> None:
    for tool in tools:
        require(shutil.which(tool) is not None, f"{tool} is not installed")


@pytest.fixture(autouse=True)
def needs_root_and_bwrap():
    require(os.geteuid() == 0, "end-to-end tests run as root")
    require_tools("bwrap")


@pytest.fixture(name="libdir", scope="session")
def fixture_libdir(tmp_path_factory):
    """The repo's modules plus the test-only stages"""
    lib = tmp_path_factory.mktemp("libdir")
    for folder in ("stages", "assemblers", "inputs", "runners", "sources", "ociarchive"):
        shutil.copytree(os.path.join(REPO, folder), lib / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in os.listdir(os.path.join(REPO, "test", "data", "stages")):
        shutil.copy2(os.path.join(REPO, "test", "data", "stages", name), lib / "stages" / name)
    # the Debian-like test tree's maker, for stages: /run/osbuild/lib/stages/debtree.py
    shutil.copy2(os.path.join(REPO, "test", "debtree.py"), lib / "stages" / "debtree.py")
    return str(lib)


class Runner:
    """Runs `python3 -m osbuild` on manifests, with one store per test"""

    def __init__(self, tmp_path, libdir):
        self.tmp = tmp_path
        self.libdir = libdir
        self.store = str(tmp_path / "store")
        self.output = str(tmp_path / "output")

    def argv(self, manifest, *extra, output=True):
        path = manifest
        if not isinstance(manifest, str):
            path = str(self.tmp / f"manifest-{abs(hash(json.dumps(manifest, sort_keys=True)))}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(manifest, f)
        argv = [sys.executable, "-m", "osbuild", "--libdir", self.libdir, "--store", self.store]
        if output:
            argv += ["--output-directory", self.output]
        return [*argv, *extra, path]

    def env(self):
        return dict(os.environ, PYTHONPATH=REPO)

    def __call__(self, manifest, *extra, output=True, timeout=600):
        return subprocess.run(self.argv(manifest, *extra, output=output), capture_output=True, text=True,
                              env=self.env(), timeout=timeout, check=False)

    def json(self, manifest, *extra, output=True):
        proc = self(manifest, "--json", *extra, output=output)
        return proc, json.loads(proc.stdout)

    def tree(self, manifest):
        """Host path of the tree a manifest built (from the store)"""
        described = json.loads(subprocess.run(self.argv(manifest, "--inspect", output=False), capture_output=True,
                                              text=True, env=self.env(), check=True).stdout)
        tree_id = described["pipeline"]["stages"][-1]["id"]
        return os.path.realpath(os.path.join(self.store, "refs", tree_id))


@pytest.fixture(name="osbuild")
def fixture_osbuild(tmp_path, libdir):
    return Runner(tmp_path, libdir)


def shell(script):
    return {"name": "org.osbuild.test.shell", "options": {"script": script}}


def oci(**options):
    opts = {"filename": "image.tar", "architecture": "amd64", **options}
    return {"name": "org.osbuild.oci-archive", "options": opts}


def run(argv, **kwargs):
    """A client command; its output is part of the failure message"""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}): {proc.stderr}{proc.stdout}"
    return proc.stdout


def debtree(*versions):
    """A stage making the Debian-like test tree (test/debtree.py), PACKAGE=VERSION picks contents"""
    return shell(" ".join(["python3", "/run/osbuild/lib/stages/debtree.py", "\"$TREE\"", *versions]))


def umoci_unpack(archive, tag, work):
    """Unpack the image `tag` of an OCI archive with umoci; the rootfs folder"""
    layout = os.path.join(work, "layout")
    os.makedirs(layout)
    with tarfile.open(archive) as tar:
        tar.extractall(layout)
    run(["umoci", "unpack", "--image", f"{layout}:{tag}", os.path.join(work, "bundle")])
    return os.path.join(work, "bundle", "rootfs")
