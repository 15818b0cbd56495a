"""`layers` with a real RPM database: packages built by rpmbuild, installed by rpm into a tree"""

import os
import subprocess

import pytest

from test.conftest import REPO, load_module_script
from test.e2e.conftest import require_tools
from test.ocitools import Archive
from test.unit.test_oci_layers import layer_tars

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root]

SPEC = """
Name: hello
Version: 1.0
Release: 1
Summary: one source package, two binary packages
License: MIT
BuildArch: noarch
%description
test
%package libs
Summary: the library half
%description libs
test
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/lib/hello %{buildroot}/usr/share/doc/hello
printf '#!/bin/sh\\necho hello\\n' > %{buildroot}/usr/bin/hello
head -c 2000000 /dev/zero | tr '\\\\0' x > %{buildroot}/usr/lib/hello/data
echo doc > %{buildroot}/usr/share/doc/hello/README
%files
/usr/bin/hello
/usr/share/doc/hello
%files libs
/usr/lib/hello
"""


def test_rpm_tree_layers_by_source_rpm(tmp_path):
    require_tools("rpm", "rpmbuild")
    top = tmp_path / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    (top / "SPECS" / "hello.spec").write_text(SPEC, encoding="utf-8")
    subprocess.run(["rpmbuild", "--define", f"_topdir {top}", "-bb", str(top / "SPECS" / "hello.spec")],
                   check=True, capture_output=True)
    rpms = sorted(str(p) for p in (top / "RPMS" / "noarch").iterdir())
    assert len(rpms) == 2
    tree = tmp_path / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    os.symlink("usr/bin", tree / "bin")
    (tree / "etc").mkdir()
    (tree / "etc" / "hostname").write_text("unowned\n", encoding="utf-8")
    rpm = ["rpm", "--root", str(tree), "--dbpath", "/usr/lib/sysimage/rpm"]
    subprocess.run([*rpm, "--initdb"], check=True, capture_output=True)
    subprocess.run([*rpm, "-i", "--nodeps", "--noscripts", *rpms], check=True, capture_output=True)
    assert os.path.isfile(tree / "usr/lib/sysimage/rpm/rpmdb.sqlite")

    module = load_module_script(os.path.join(REPO, "assemblers", "org.osbuild.oci-archive"))
    out = tmp_path / "out"
    out.mkdir()
    options = {"filename": "image.tar", "architecture": "amd64", "source-epoch": 1700000000, "layers": {}}
    assert module.main(str(out), {"tree": {"path": str(tree)}}, options) == 0
    archive = Archive(str(out / "image.tar"))
    history = [h["created_by"] for h in archive.config["history"]]
    assert history == ["osbuild oci-archive: packages hello",
                       "osbuild oci-archive: unpackaged files, package databases and all directories"]
    tars = layer_tars(archive)
    files = {i.name for i in tars[0] if not i.isdir()}
    assert files == {"./usr/bin/hello", "./usr/lib/hello/data", "./usr/share/doc/hello/README"}, \
        "both binary packages of the source RPM hello, nothing else"
    last = {i.name for i in tars[1]}
    assert {"./etc/hostname", "./usr/lib/sysimage/rpm/rpmdb.sqlite", "./bin"} <= last
