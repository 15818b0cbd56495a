"""`pip install .` gives a working `osbuild` command that finds its modules"""

import json
import os
import subprocess
import sys

import pytest

from test.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.needs_bwrap]


def test_installed_command_builds_the_sample(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", REPO], check=True, env=env, cwd=tmp_path)
    proc = subprocess.run([str(venv / "bin" / "osbuild"), "--store", "store", "--output-directory", "out",
                           os.path.join(REPO, "samples", "busybox-oci.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert os.path.getsize(tmp_path / "out" / "busybox.oci.tar") > 100_000
    # the modules came from the installed package, not from the checkout
    module = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import osbuild.main_cli as m; print(m.default_libdir())"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.strip()
    assert module.startswith(str(venv)) and os.path.isfile(os.path.join(module, "assemblers",
                                                                        "org.osbuild.oci-archive"))
    # the machinery the sandbox gets (and the command uses) is the installed package too
    package = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import ociarchive, os; print(os.path.dirname(ociarchive.__file__))"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.strip()
    assert package.startswith(str(venv)), package
    rootfs = tmp_path / "rootfs"
    os.makedirs(rootfs / "etc")
    (rootfs / "etc" / "hostname").write_text("box\n", encoding="utf-8")
    proc = subprocess.run([str(venv / "bin" / "osbuild-oci"), str(rootfs), "-o", "folder.tar", "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["filename"] == "folder.tar"
    assert os.path.isfile(tmp_path / "folder.tar")
