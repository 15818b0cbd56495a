"""`layers` with a real RPM database: packages built by rpmbuild, installed by rpm into a tree"""

import json
import os
import re
import subprocess

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

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


def rpm_tree(tmp_path):
    """A tree with the two packages of SPEC installed by rpm"""
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
    return tree


def assemble(tree, out, **options):
    """The assembler's archive of `tree` in the new folder `out`, with `options`; its path"""
    module = load_module_script(os.path.join(REPO, "assemblers", "org.osbuild.oci-archive"))
    os.makedirs(out)
    options = {"filename": "image.tar", "architecture": "amd64", "source-epoch": 1700000000, **options}
    assert module.main(str(out), {"tree": {"path": str(tree)}}, options) == 0
    return os.path.join(out, "image.tar")


def test_rpm_tree_layers_by_source_rpm(tmp_path):
    require_tools("rpm", "rpmbuild")
    archive = Archive(assemble(rpm_tree(tmp_path), tmp_path / "out", layers={}))
    history = [h["created_by"] for h in archive.config["history"]]
    assert history == ["osbuild oci-archive: packages hello",
                       "osbuild oci-archive: unpackaged files, package databases and all directories"]
    tars = layer_tars(archive)
    files = {i.name for i in tars[0] if not i.isdir()}
    assert files == {"./usr/bin/hello", "./usr/lib/hello/data", "./usr/share/doc/hello/README"}, \
        "both binary packages of the source RPM hello, nothing else"
    last = {i.name for i in tars[1]}
    assert {"./etc/hostname", "./usr/lib/sysimage/rpm/rpmdb.sqlite", "./bin"} <= last


def arch_of(package):
    return re.search(r"arch=([^&]+)", package["externalRefs"][0]["referenceLocator"])[1]


def test_rpm_tree_sbom_lists_what_rpm_lists(tmp_path):
    require_tools("rpm", "rpmbuild")
    tree = rpm_tree(tmp_path)
    out = os.path.dirname(assemble(tree, tmp_path / "sbom", sbom=True))
    document = parse_file(os.path.join(out, "image.tar.spdx.json"))
    assert not validate_full_spdx_document(document)
    with open(os.path.join(out, "image.tar.spdx.json"), encoding="utf-8") as f:
        doc = json.load(f)
    listed = subprocess.run(["rpm", "--root", str(tree), "--dbpath", "/usr/lib/sysimage/rpm", "-qa", "--qf",
                             "%{NAME} %{VERSION}-%{RELEASE} %{ARCH} %{LICENSE}\\n"], capture_output=True, text=True,
                            check=True).stdout.split("\n")
    expected = sorted(tuple(line.split()) for line in listed if line)
    found = sorted((p["name"], p["versionInfo"], arch_of(p),
                    p["licenseDeclared"]) for p in doc["packages"][1:])
    assert found == expected
    assert all(p["sourceInfo"] == "built package from: hello-1.0-1.src.rpm" for p in doc["packages"][1:])
