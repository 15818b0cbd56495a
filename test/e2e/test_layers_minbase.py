"""`layers` on a real Debian tree: debootstrap --variant=minbase of Debian 12

Needs apt's configured Debian mirror. The layered image must unpack (umoci)
to exactly the tree, and an upgrade of one package (its files and its dpkg
status changed) must change at most two layer blobs.
"""

import json
import os
import subprocess

import pytest

from test.conftest import REPO, load_module_script
from test.e2e.conftest import require, require_tools, umoci_unpack
from test.e2e.test_oci_archive_clients import describe_tree
from test.ocitools import Archive

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.clients]

EPOCH = 1700000000


def apt_mirror():
    """The first Debian mirror apt is configured with (deb822 .sources or one-line .list)"""
    folder = "/etc/apt/sources.list.d"
    files = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith((".sources", ".list"))] \
        if os.path.isdir(folder) else []
    for path in ["/etc/apt/sources.list", *files]:
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.split("#", 1)[0].split() for line in f]
        except OSError:
            continue
        for words in lines:
            urls = words[1:] if words[:1] == ["URIs:"] else words[1:3] if words[:1] == ["deb"] else []
            for url in urls:
                if url.startswith("http") and "security" not in url:
                    return url
    return "http://deb.debian.org/debian"


@pytest.fixture(name="minbase", scope="module")
def fixture_minbase(tmp_path_factory):
    require_tools("debootstrap", "umoci")
    root = tmp_path_factory.mktemp("minbase") / "tree"
    proc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), apt_mirror()],
                          capture_output=True, text=True, check=False, timeout=900)
    require(proc.returncode == 0, f"debootstrap could not make a Debian 12 tree (no mirror reachable?): "
                                  f"{proc.stdout[-500:]}{proc.stderr[-500:]}")
    return str(root)


@pytest.fixture(name="oci_archive", scope="module")
def fixture_oci_archive():
    return load_module_script(os.path.join(REPO, "assemblers", "org.osbuild.oci-archive"))


def assemble(module, tree, out, **options):
    os.makedirs(out, exist_ok=True)
    opts = {"filename": "image.tar", "architecture": "amd64", "source-epoch": EPOCH, "tag": "minbase", **options}
    assert module.main(str(out), {"tree": {"path": str(tree)}}, opts) == 0
    return Archive(os.path.join(out, "image.tar"))


def test_minbase_layers_unpack_to_the_tree(oci_archive, minbase, tmp_path, capsys):
    archive = assemble(oci_archive, minbase, tmp_path / "out", layers={})
    layers = archive.manifest["layers"]
    history = [h["created_by"] for h in archive.config["history"]]
    assert 8 <= len(layers) <= 16
    assert any("packages glibc" in line for line in history), history
    assert history[-1].startswith("osbuild oci-archive: unpackaged")
    rootfs = umoci_unpack(archive.path, "minbase", str(tmp_path))
    expected, expected_links = describe_tree(minbase)
    for entry in expected.values():
        entry["mtime"] = min(entry["mtime"], EPOCH)  # source-epoch clamps
    actual, actual_links = describe_tree(rootfs)
    assert sorted(actual) == sorted(expected)
    for rel, entry in expected.items():
        assert actual[rel] == entry, f"{rel}: differs"
    assert actual_links == expected_links
    with capsys.disabled():
        print(f"\nminbase: {len(layers)} layers: " +
              ", ".join(f"{d['size'] / 2**20:.1f}" for d in layers) + " MiB")


def test_minbase_upgrade_of_one_package_changes_two_blobs(oci_archive, minbase, tmp_path):
    before = assemble(oci_archive, minbase, tmp_path / "before", layers={})
    upgraded = str(tmp_path / "upgraded")
    subprocess.run(["cp", "-a", minbase, upgraded], check=True)
    # "upgrade" sed: new contents for each of its files, a new version in dpkg's status
    with open(os.path.join(upgraded, "var/lib/dpkg/info/sed.list"), encoding="utf-8") as f:
        files = [line.strip() for line in f if line.strip()]
    changed = 0
    for listed in files:
        path = os.path.realpath(os.path.join(upgraded, "usr" + listed if listed.startswith("/bin/") else
                                             listed.lstrip("/")))
        if os.path.isfile(path) and not os.path.islink(path) and path.startswith(upgraded):
            with open(path, "ab") as f:
                f.write(b"\n# upgraded\n")
            changed += 1
    assert changed >= 3
    status = os.path.join(upgraded, "var/lib/dpkg/status")
    with open(status, encoding="utf-8") as f:
        text = f.read()
    with open(status, "w", encoding="utf-8") as f:
        f.write(text.replace("Package: sed\n", "Package: sed\nX-Upgraded: yes\n", 1))
    after = assemble(oci_archive, upgraded, tmp_path / "after", layers={})
    old = {d["digest"] for d in before.manifest["layers"]}
    new_blobs = [d for d in after.manifest["layers"] if d["digest"] not in old]
    assert len(after.manifest["layers"]) == len(before.manifest["layers"])
    assert len(new_blobs) == 2, json.dumps([h["created_by"] for h in after.config["history"]])


def test_the_readme_route_osbuild_oci_on_a_debootstrap_folder(oci_archive, minbase, tmp_path):
    """README: `osbuild-oci rootfs -o debian.tar --tag debian:12 --layers 16`: podman pulls it,
    and with a source epoch it is byte for byte the assembler's archive of the tree"""
    require_tools("osbuild-oci", "podman")
    out = tmp_path / "debian.tar"
    proc = subprocess.run(["osbuild-oci", minbase, "-o", str(out), "--tag", "debian:12", "--layers", "16",
                           "--source-epoch", str(EPOCH)], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=600)
    assert proc.returncode == 0, proc.stderr
    module = assemble(oci_archive, minbase, tmp_path / "module", layers={"max": 16}, tag="debian:12")
    with open(out, "rb") as a, open(module.path, "rb") as b:
        assert a.read() == b.read()
    pulled = subprocess.run(["podman", "pull", "-q", f"oci-archive:{out}"], capture_output=True, text=True,
                            check=False)
    try:
        assert pulled.returncode == 0, pulled.stderr
        names = subprocess.run(["podman", "image", "inspect", "--format", "{{.RepoTags}}", pulled.stdout.strip()],
                               capture_output=True, text=True, check=True).stdout
        assert "debian:12" in names
    finally:
        subprocess.run(["podman", "rmi", "-f", pulled.stdout.strip()], capture_output=True, check=False)
