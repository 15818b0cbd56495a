"""The SPDX 2.3 document beside the archive: valid by the SPDX project's own tools, the tree's packages, reproducible"""

import hashlib
import json
import os
import shutil
import subprocess

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from ociarchive.sbom import spdx_expression
from test.debtree import EPOCH, make_debian_tree, set_times
from test.ocitools import Archive

OPTIONS = {"filename": "image.tar", "architecture": "amd64", "source-epoch": EPOCH, "sbom": True}

STATUS = """Package: coreutils
Status: install ok installed
Maintainer: Michael Stone <mstone@debian.org>
Architecture: amd64
Version: 9.1-1
Homepage: https://www.gnu.org/software/coreutils/

Package: libfoo1
Status: install ok installed
Maintainer: Foo Team <foo@lists.example.org>
Architecture: amd64
Source: foo (1.2-3)
Version: 1.2-3+b1

Package: foo-tools
Status: install ok installed
Architecture: amd64
Source: foo
Version: 1.2-3

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 0.1

Package: tzdata
Status: install ok installed
Architecture: all
Version: 1:2024a-0+deb12u1
"""

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: coreutils

Files: *
Copyright: 1984-2022 Free Software Foundation, Inc.
License: GPL-3+

Files: src/odd.c
Copyright: someone
License: Expat or Odd-License

License: GPL-3+
 The full text.
"""


def debian_tree(root):
    make_debian_tree(root)
    with open(os.path.join(root, "var/lib/dpkg/status"), "w", encoding="utf-8") as f:
        f.write(STATUS)
    with open(os.path.join(root, "usr/share/doc/coreutils/copyright"), "w", encoding="utf-8") as f:
        f.write(DEP5)
    os.makedirs(os.path.join(root, "usr/share/doc/tzdata"))
    with open(os.path.join(root, "usr/share/doc/tzdata/copyright"), "w", encoding="utf-8") as f:
        f.write("This is free software. See the GNU General Public License.\n")  # not machine-readable
    with open(os.path.join(root, "etc/os-release"), "w", encoding="utf-8") as f:
        f.write('ID=debian\nVERSION_ID="12"\n')
    set_times(root, EPOCH)
    return root


def build(module, tree, out, **options):
    os.makedirs(out, exist_ok=True)
    seen = []
    assert module.main(str(out), {"tree": {"path": str(tree)}}, dict(OPTIONS, **options), metadata=seen.append) == 0
    return seen[0]


def validate(path):
    document = parse_file(str(path))
    problems = validate_full_spdx_document(document)
    assert not problems, [p.validation_message for p in problems]
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_debian_tree_sbom_is_valid_and_lists_what_dpkg_lists(oci_archive, tmp_path, capsys):
    tree = debian_tree(str(tmp_path / "tree"))
    result = build(oci_archive, tree, tmp_path / "out")
    sbom_path = tmp_path / "out" / "image.tar.spdx.json"
    doc = validate(sbom_path)
    packages = {p["name"]: p for p in doc["packages"][1:]}
    if shutil.which("dpkg-query"):
        listed = subprocess.run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f",
                                 "${db:Status-Status} ${Package} ${Version}\n"], capture_output=True, text=True,
                                check=True).stdout.split("\n")
        expected = {line.split()[1]: line.split()[2] for line in listed if line.startswith("installed ")}
    else:
        expected = {"coreutils": "9.1-1", "libfoo1": "1.2-3+b1", "foo-tools": "1.2-3", "tzdata": "1:2024a-0+deb12u1"}
    assert {name: p["versionInfo"] for name, p in packages.items()} == expected
    coreutils = packages["coreutils"]
    assert coreutils["licenseDeclared"] == "(MIT OR LicenseRef-Odd-License) AND GPL-3.0-or-later"
    assert coreutils["supplier"] == "Organization: Michael Stone (mstone@debian.org)"
    assert coreutils["externalRefs"][0]["referenceLocator"] == \
        "pkg:deb/debian/coreutils@9.1-1?arch=amd64&distro=debian-12"
    assert packages["tzdata"]["licenseDeclared"] == "NOASSERTION", "a copyright file that is not machine-readable"
    assert packages["foo-tools"]["licenseDeclared"] == "NOASSERTION"
    assert packages["tzdata"]["externalRefs"][0]["referenceLocator"] == \
        "pkg:deb/debian/tzdata@1%3A2024a-0%2Bdeb12u1?arch=all&distro=debian-12"
    assert packages["libfoo1"]["sourceInfo"] == "built package from: foo 1.2-3"
    assert "LicenseRef-Odd-License" in {e["licenseId"] for e in doc["hasExtractedLicensingInfos"]}
    # the image: its config digest (the image ID) as checksum and in the namespace; it contains every package
    archive = Archive(str(tmp_path / "out" / "image.tar"))
    config_digest = archive.manifest["config"]["digest"]
    image = doc["packages"][0]
    assert image["checksums"] == [{"algorithm": "SHA256", "checksumValue": config_digest.split(":")[1]}]
    assert doc["documentNamespace"].endswith(config_digest.split(":")[1])
    assert doc["creationInfo"]["created"] == "2020-09-13T12:26:40Z"
    relations = {(r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in doc["relationships"]}
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", image["SPDXID"]) in relations
    assert {p["SPDXID"] for p in doc["packages"][1:]} == \
        {related for _, kind, related in relations if kind == "CONTAINS"}
    # the manifest names the SBOM by its digest (the config does not: the SBOM names the config)
    digest = "sha256:" + hashlib.sha256(sbom_path.read_bytes()).hexdigest()
    assert archive.manifest["annotations"]["org.osbuild.sbom.spdx.digest"] == digest
    assert "annotations" not in archive.index["manifests"][0]
    assert result["sbom"] == {"filename": "image.tar.spdx.json", "digest": digest}
    unowned = int(doc["comment"].split()[0])
    assert unowned >= 5, "etc/hostname, etc/shadow, opt/app/... belong to no package"
    assert "sbom: 4 packages" in capsys.readouterr().out


def test_same_tree_same_bytes_and_no_sbom_without_the_option(oci_archive, tmp_path):
    tree = debian_tree(str(tmp_path / "tree"))
    build(oci_archive, tree, tmp_path / "a")
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-a", tree, copy], check=True)
    build(oci_archive, copy, tmp_path / "b")
    for name in ("image.tar", "image.tar.spdx.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    build(oci_archive, tree, tmp_path / "c", sbom=False)
    assert os.listdir(tmp_path / "c") == ["image.tar"]
    assert "annotations" not in Archive(str(tmp_path / "c" / "image.tar")).manifest


def test_a_tree_without_a_package_database_gets_the_image_only(oci_archive, tmp_path, capsys):
    tree = tmp_path / "empty"
    tree.mkdir()
    (tree / "file").write_text("x", encoding="utf-8")
    build(oci_archive, tree, tmp_path / "out", tag="bare:1")
    doc = validate(tmp_path / "out" / "image.tar.spdx.json")
    assert [p["name"] for p in doc["packages"]] == ["bare:1"]
    assert doc["comment"].startswith("1 files")
    assert "no dpkg or rpm database in the tree" in capsys.readouterr().out


def test_a_failing_build_leaves_no_sbom(oci_archive, tmp_path, monkeypatch):
    import ociarchive.build  # noqa: PLC0415  pylint: disable=import-outside-toplevel
    tree = debian_tree(str(tmp_path / "tree"))
    monkeypatch.setattr(ociarchive.build, "layer_tar_argv", lambda root, epoch: ["sh", "-c", "exit 2"])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError):
        oci_archive.main(str(out), {"tree": {"path": tree}}, dict(OPTIONS))
    assert os.listdir(out) == []


@pytest.mark.parametrize("text,expression", [
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("GPLv3+", "GPL-3.0-or-later"),
    ("Expat", "MIT"),
    ("MIT AND (BSD-3-Clause OR Apache-2.0)", "MIT AND (BSD-3-Clause OR Apache-2.0)"),
    ("GPL-2.0-or-later WITH GCC-exception-3.1", "GPL-2.0-or-later WITH GCC-exception-3.1"),
    ("GPL-2+ with Odd exception", "LicenseRef-GPL-2-with-Odd-exception"),
    ("public-domain", "LicenseRef-public-domain"),
    ("BSD-3-clause or GPL-2", "BSD-3-Clause OR GPL-2.0-only"),
    ("MIT and", "LicenseRef-MIT-and"),
    ("(MIT", "LicenseRef-MIT"),
])
def test_licence_names_become_valid_spdx_expressions(text, expression):
    refs = {}
    assert spdx_expression(text, refs) == expression
    assert all(ref.startswith("LicenseRef-") for ref in refs)
