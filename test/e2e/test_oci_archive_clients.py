"""org.osbuild.oci-archive through the engine, checked with skopeo, umoci, podman

The tree made here has what an image must carry over exactly: modes
(setuid, sticky), owners, mtimes, hard links, symbolic links, device nodes,
a fifo, a sparse file, a user xattr and a file capability. Each client's
view of the image is compared with the tree the pipeline built.
"""

import hashlib
import json
import os
import stat
import struct
import tarfile

import pytest

from test.e2e.conftest import Runner, oci, require_tools, run, shell, umoci_unpack
from test.ocitools import Archive

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.needs_bwrap, pytest.mark.clients]

# security.capability for cap_net_bind_service+ep (VFS_CAP_REVISION_2)
CAPABILITY = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)
KEPT_XATTRS = ("user.", "security.capability")

POPULATE = f"""
mkdir -p usr/bin etc data dev srv home/user
printf 'hello\\n' > etc/hello
chmod 640 etc/hello
chown 1000:2000 etc/hello
ln etc/hello etc/hello.hard
ln -s ../etc/hello data/link
ln -s usr/bin bin
printf '#!/bin/sh\\necho tool\\n' > usr/bin/tool
chmod 4755 usr/bin/tool
mkdir -m 1777 tmp
chown -R 1000:1000 home/user
chmod 700 home/user
mknod dev/null-copy c 1 3
mknod dev/loop-copy b 7 0
mkfifo srv/fifo
dd if=/dev/zero of=data/sparse bs=1 count=0 seek=10485760 2>/dev/null
printf 'end' >> data/sparse
printf '' > data/empty
python3 -c 'import os; os.setxattr("etc/hello", "user.note", b"kept")'
python3 -c 'import os; os.setxattr("usr/bin/tool", "security.capability", bytes.fromhex("{CAPABILITY.hex()}"))'
find . -exec touch -h -d @1600000000 {{}} +
"""

CONFIG = {
    "Cmd": ["-c", "echo hi"],
    "Entrypoint": ["/bin/sh"],
    "Env": ["PATH=/usr/bin:/bin", "GREETING=hello world"],
    "ExposedPorts": ["80", "53/udp"],
    "StopSiganl": "SIGINT",
    "Labels": {"org.example.team": "images", "version": "1.2"},
    "WorkingDir": "/srv",
    "User": "1000:1000",
    "Volumes": ["/data"],
}


def describe_tree(root):
    """Everything about a tree that an image has to carry over, by path"""
    entries = {}
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            xattrs = {}
            for key in os.listxattr(path, follow_symlinks=False):
                if key.startswith(KEPT_XATTRS):
                    xattrs[key] = os.getxattr(path, key, follow_symlinks=False)
            entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "xattrs": xattrs,
                     "mtime": int(st.st_mtime)}
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    entry["sha256"] = hashlib.sha256(f.read()).hexdigest()
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            entries[rel] = entry
    links = sorted(sorted(paths) for paths in inodes.values() if len(paths) > 1)
    return entries, links


def assert_same_tree(expected_root, actual_root, links=(("etc/hello", "etc/hello.hard"),)):
    """The client's view is the tree, entry by entry; the hard links are `links`"""
    expected, expected_links = describe_tree(expected_root)
    actual, actual_links = describe_tree(actual_root)
    assert sorted(actual) == sorted(expected)
    for rel, entry in expected.items():
        assert actual[rel] == entry, f"{rel}: differs"
    assert actual_links == expected_links == [list(link) for link in links]


@pytest.fixture(name="image", scope="module")
def fixture_image(tmp_path_factory, libdir):
    """Build the special tree and its archive once, through the engine"""
    require_tools("skopeo", "umoci", "podman")
    osbuild = Runner(tmp_path_factory.mktemp("image"), libdir)
    manifest = {"pipeline": {"stages": [shell(POPULATE)],
                             "assembler": oci(tag="test", config=CONFIG, **{"source-epoch": 1700000000})}}
    proc = osbuild(manifest)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    tree = osbuild.tree({"pipeline": {"stages": [shell(POPULATE)]}})
    return {"archive": os.path.join(osbuild.output, "image.tar"), "tree": tree, "runner": osbuild,
            "tmp": tmp_path_factory.mktemp("clients")}


def test_the_tree_has_what_we_test(image):
    entries, links = describe_tree(image["tree"])
    assert entries["usr/bin/tool"]["xattrs"] == {"security.capability": CAPABILITY}
    assert entries["etc/hello"]["xattrs"] == {"user.note": b"kept"}
    assert stat.S_ISCHR(entries["dev/null-copy"]["mode"]) and stat.S_ISBLK(entries["dev/loop-copy"]["mode"])
    assert os.stat(os.path.join(image["tree"], "data", "sparse")).st_blocks * 512 < 1024 * 1024
    assert links == [["etc/hello", "etc/hello.hard"]]


def test_umoci_unpack_round_trips_the_tree(image, tmp_path):
    assert_same_tree(image["tree"], umoci_unpack(image["archive"], "test", str(tmp_path)))
    with open(tmp_path / "bundle" / "config.json", encoding="utf-8") as f:
        runtime = json.load(f)
    assert runtime["process"]["args"] == ["/bin/sh", "-c", "echo hi"]
    assert runtime["process"]["cwd"] == "/srv"
    assert "GREETING=hello world" in runtime["process"]["env"]


def test_skopeo_inspect_and_copy(image, tmp_path):
    archive = Archive(image["archive"])
    info = json.loads(run(["skopeo", "inspect", f"oci-archive:{image['archive']}"]))
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert info["Layers"] == [archive.manifest["layers"][0]["digest"]]
    assert info["Created"] == "2023-11-14T22:13:20Z"
    assert info["Labels"] == CONFIG["Labels"]
    config = json.loads(run(["skopeo", "inspect", "--config", f"oci-archive:{image['archive']}"]))
    assert config == archive.config
    run(["skopeo", "copy", "--quiet", f"oci-archive:{image['archive']}:test", f"oci:{tmp_path / 'copy'}:copied"])
    with open(tmp_path / "copy" / "index.json", encoding="utf-8") as f:
        index = json.load(f)
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "copied"
    layer = archive.manifest["layers"][0]["digest"].split(":")[1]
    with open(tmp_path / "copy" / "blobs" / "sha256" / layer, "rb") as f:
        assert f.read() == archive.layer_blob  # the blob passes through unchanged
    run(["skopeo", "copy", "--quiet", f"oci-archive:{image['archive']}", f"dir:{tmp_path / 'dir'}"])


def podman(image, *args):
    storage = image["tmp"] / "podman"
    return run(["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
                "--storage-driver", "vfs", *args])


def test_podman_pull_shows_config_and_tree(image):
    podman(image, "pull", "--quiet", f"oci-archive:{image['archive']}")
    inspected = json.loads(podman(image, "image", "inspect", "localhost/test:latest"))[0]
    config = inspected["Config"]
    assert config["Cmd"] == CONFIG["Cmd"] and config["Entrypoint"] == CONFIG["Entrypoint"]
    assert config["Env"] == CONFIG["Env"]
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert config["StopSignal"] == "SIGINT"
    assert config["Labels"] == CONFIG["Labels"]
    assert config["WorkingDir"] == "/srv" and config["User"] == "1000:1000"
    assert config["Volumes"] == {"/data": {}}
    assert inspected["Architecture"] == "amd64" and inspected["Os"] == "linux"
    mountpoint = podman(image, "image", "mount", "localhost/test:latest").strip()
    try:
        assert_same_tree(image["tree"], mountpoint)
    finally:
        podman(image, "image", "unmount", "localhost/test:latest")


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_other_compressions_with_clients(image, tmp_path, compression):
    osbuild = image["runner"]
    manifest = {"pipeline": {"stages": [shell(POPULATE)],
                             "assembler": oci(tag=compression, compression=compression, filename=f"{compression}.tar")}}
    proc = osbuild(manifest)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    path = os.path.join(osbuild.output, f"{compression}.tar")
    archive = Archive(path)
    assert archive.compression == compression
    info = json.loads(run(["skopeo", "inspect", f"oci-archive:{path}"]))
    assert info["Layers"] == [archive.manifest["layers"][0]["digest"]]
    # podman reads every layer type; umoci 0.4 (Debian 12) has no zstd
    name = f"localhost/{compression}:latest"
    podman(image, "pull", "--quiet", f"oci-archive:{path}")
    mountpoint = podman(image, "image", "mount", name).strip()
    try:
        assert_same_tree(image["tree"], mountpoint)
    finally:
        podman(image, "image", "unmount", name)
    if compression == "none":
        layout = tmp_path / "layout"
        layout.mkdir()
        with tarfile.open(path) as tar:
            tar.extractall(layout)
        run(["umoci", "unpack", "--image", f"{layout}:{compression}", str(tmp_path / "bundle")])
        assert_same_tree(image["tree"], tmp_path / "bundle" / "rootfs")


def test_same_tree_same_bytes_through_the_engine(image, tmp_path, libdir):
    """A fresh store, another time: with source-epoch the archive is identical"""
    other = Runner(tmp_path, libdir)
    manifest = {"pipeline": {"stages": [shell(POPULATE)],
                             "assembler": oci(tag="test", config=CONFIG, **{"source-epoch": 1700000000})}}
    proc = other(manifest)
    assert proc.returncode == 0, proc.stderr
    with open(image["archive"], "rb") as a, open(os.path.join(other.output, "image.tar"), "rb") as b:
        assert a.read() == b.read()
