"""Layered images and the docker-archive side through real clients, and a real registry

The Debian-like tree (test/debtree.py) is built by a stage, assembled with
`layers`, and read back by umoci, podman and skopeo: every client must see
exactly the tree. The same archive is loaded as a docker-archive. Then a
real registry (Debian's docker-registry, the CNCF distribution registry)
on 127.0.0.1 receives two versions of the image that differ in one
package: the second push uploads only the changed layers and the registry
stores the others once.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from test.e2e.conftest import Runner, debtree, oci, require_tools, run, umoci_unpack
from test.e2e.test_oci_archive_clients import assert_same_tree
from test.ocitools import Archive

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.needs_bwrap, pytest.mark.clients]

EPOCH = 1700000000
LAYERS = {"paths": [{"name": "app", "paths": ["/opt/app"]}]}


def layered_manifest(*versions, tag="layered", filename="image.tar"):
    return {"pipeline": {"stages": [debtree(*versions)],
                         "assembler": oci(tag=tag, layers=LAYERS, filename=filename, **{"source-epoch": EPOCH})}}


def assert_tree_equal(expected_root, actual_root):
    assert_same_tree(expected_root, actual_root, links=[("usr/bin/cat", "usr/bin/foo")])


@pytest.fixture(name="layered", scope="module")
def fixture_layered(tmp_path_factory, libdir):
    require_tools("skopeo", "umoci", "podman")
    osbuild = Runner(tmp_path_factory.mktemp("layered"), libdir)
    proc = osbuild(layered_manifest())
    assert proc.returncode == 0, proc.stderr + proc.stdout
    archive = os.path.join(osbuild.output, "image.tar")
    return {"archive": archive, "tree": osbuild.tree({"pipeline": {"stages": [debtree()]}}),
            "runner": osbuild, "tmp": tmp_path_factory.mktemp("layered-clients"), "log": proc.stdout}


def podman(tmp, *args):
    # podman wants a runroot of at most 50 characters: a short one per storage
    runroot = os.path.join("/tmp", "osbuild-podman-" + hashlib.sha256(str(tmp).encode()).hexdigest()[:12])
    return run(["podman", "--root", str(tmp / "podman"), "--runroot", runroot, "--storage-driver", "vfs", *args])


@pytest.fixture(autouse=True, scope="module")
def podman_runroots():
    yield
    for name in os.listdir("/tmp"):
        if name.startswith("osbuild-podman-"):
            shutil.rmtree(os.path.join("/tmp", name), ignore_errors=True)


def test_layered_image_has_layers_per_package(layered):
    archive = Archive(layered["archive"])
    history = [h["created_by"] for h in archive.config["history"]]
    assert len(archive.manifest["layers"]) == len(history) == len(archive.config["rootfs"]["diff_ids"]) >= 4
    assert "osbuild oci-archive: paths app" in history
    assert "osbuild oci-archive: packages bigdata" in history
    assert history[-1].startswith("osbuild oci-archive: unpackaged")
    assert "oci-archive: layers: dpkg database: 5 packages" in layered["log"]


def test_umoci_unpacks_the_layered_image_to_the_tree(layered, tmp_path):
    assert_tree_equal(layered["tree"], umoci_unpack(layered["archive"], "layered", str(tmp_path)))


def assert_podman_pulls_the_tree(layered, archive, name):
    podman(layered["tmp"], "pull", "--quiet", f"oci-archive:{archive}")
    mountpoint = podman(layered["tmp"], "image", "mount", f"localhost/{name}:latest").strip()
    try:
        assert_tree_equal(layered["tree"], mountpoint)
    finally:
        podman(layered["tmp"], "image", "unmount", f"localhost/{name}:latest")


def test_podman_pulls_the_layered_image_as_the_tree(layered):
    assert_podman_pulls_the_tree(layered, layered["archive"], "layered")


def test_podman_pulls_a_layered_zstd_image_as_the_tree(layered, tmp_path_factory, libdir):
    """Layered zstd blobs are zstd frames, one per piece, one after the other"""
    osbuild = Runner(tmp_path_factory.mktemp("layered-zstd"), libdir)
    manifest = layered_manifest(tag="layered-zstd")
    manifest["pipeline"]["assembler"]["options"]["compression"] = "zstd"
    proc = osbuild(manifest)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    archive = os.path.join(osbuild.output, "image.tar")
    assert len(Archive(archive).manifest["layers"]) >= 4
    assert_podman_pulls_the_tree(layered, archive, "layered-zstd")


def test_docker_archive_side_matches_the_oci_side(layered, tmp_path):
    archive = Archive(layered["archive"])
    docker = json.loads(archive.members["manifest.json"])
    assert docker[0]["RepoTags"] == ["layered:latest"]
    assert docker[0]["Layers"] == ["blobs/sha256/" + d["digest"].split(":")[1] for d in archive.manifest["layers"]]
    assert "repositories" not in archive.members
    oci_side = json.loads(run(["skopeo", "inspect", f"oci-archive:{layered['archive']}"]))
    docker_side = json.loads(run(["skopeo", "inspect", f"docker-archive:{layered['archive']}"]))
    config = json.loads(run(["skopeo", "inspect", "--config", f"docker-archive:{layered['archive']}"]))
    assert config["rootfs"]["diff_ids"] == archive.config["rootfs"]["diff_ids"]
    assert oci_side["Layers"] == [d["digest"] for d in archive.manifest["layers"]]
    # docker-archive: reads the layers uncompressed, names them by diff_id
    assert docker_side["Layers"] == archive.config["rootfs"]["diff_ids"]
    run(["skopeo", "copy", "--quiet", f"docker-archive:{layered['archive']}", f"oci:{tmp_path / 'copy'}:copied"])
    with open(tmp_path / "copy" / "index.json", encoding="utf-8") as f:
        index = json.load(f)
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    with open(tmp_path / "copy" / "blobs" / "sha256" / manifest_digest, encoding="utf-8") as f:
        copied = json.load(f)
    with open(tmp_path / "copy" / "blobs" / "sha256" / copied["config"]["digest"].split(":")[1], "rb") as f:
        assert json.loads(f.read())["rootfs"]["diff_ids"] == archive.config["rootfs"]["diff_ids"]


def test_podman_load_reads_the_archive(layered, tmp_path):
    out = podman(tmp_path, "load", "--input", layered["archive"])
    assert "layered:latest" in out
    inspected = json.loads(podman(tmp_path, "image", "inspect", "localhost/layered:latest"))[0]
    assert inspected["RootFS"]["Layers"] == Archive(layered["archive"]).config["rootfs"]["diff_ids"]


def test_untagged_archive_has_no_repo_tags(layered):
    osbuild = layered["runner"]
    manifest = {"pipeline": {"stages": [debtree()], "assembler": oci(filename="untagged.tar")}}
    proc = osbuild(manifest)
    assert proc.returncode == 0, proc.stderr
    path = os.path.join(osbuild.output, "untagged.tar")
    assert json.loads(Archive(path).members["manifest.json"])[0]["RepoTags"] == []
    info = json.loads(run(["skopeo", "inspect", f"docker-archive:{path}"]))
    assert info["Layers"] == Archive(path).config["rootfs"]["diff_ids"]


# --- a real registry ----------------------------------------------------------------

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="registry")
def fixture_registry(tmp_path):
    """docker-registry on 127.0.0.1, storage in a temporary folder, stopped by its PID"""
    require_tools("docker-registry", "skopeo")
    port = free_port()
    storage = tmp_path / "registry"
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n", encoding="utf-8")
    log = open(tmp_path / "registry.log", "wb")  # pylint: disable=consider-using-with
    proc = subprocess.Popen(["docker-registry", "serve", str(config)],  # pylint: disable=consider-using-with
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {(tmp_path / 'registry.log').read_text()}")
                time.sleep(0.1)
        yield {"host": f"127.0.0.1:{port}", "storage": storage}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert proc.poll() is not None, "the registry is stopped"


def registry_blobs(storage):
    """The digests of the blobs the registry stores, from its storage on disk"""
    root = storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
    return {f"sha256:{name}" for prefix in os.listdir(root) for name in os.listdir(root / prefix)}


def push(archive, ref):
    """skopeo copy to the registry; its debug log says which blobs it skipped and uploaded"""
    proc = subprocess.run(["skopeo", "--debug", "copy", "--dest-tls-verify=false", f"oci-archive:{archive}",
                           f"docker://{ref}"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_push_and_pull_back_keep_every_digest(layered, registry, tmp_path):
    archive = Archive(layered["archive"])
    ref = f"{registry['host']}/osbuild/layered:1"
    push(layered["archive"], ref)
    info = json.loads(run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"]))
    assert info["Digest"] == archive.index["manifests"][0]["digest"], "the manifest is pushed unchanged"
    assert info["Layers"] == [d["digest"] for d in archive.manifest["layers"]]
    run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'back'}:back"])
    with open(tmp_path / "back" / "index.json", encoding="utf-8") as f:
        assert json.load(f)["manifests"][0]["digest"] == archive.index["manifests"][0]["digest"]
    for desc in archive.manifest["layers"]:
        with open(tmp_path / "back" / "blobs" / "sha256" / desc["digest"].split(":")[1], "rb") as f:
            assert f.read() == archive.blob(desc)


def test_second_version_uploads_only_changed_layers(layered, registry):
    osbuild = layered["runner"]
    proc = osbuild(layered_manifest("tzdata=2", tag="layered2", filename="image2.tar"))
    assert proc.returncode == 0, proc.stderr
    first, second = Archive(layered["archive"]), Archive(os.path.join(osbuild.output, "image2.tar"))
    first_layers = [d["digest"] for d in first.manifest["layers"]]
    second_layers = [d["digest"] for d in second.manifest["layers"]]
    changed = [d for d in second_layers if d not in first_layers]
    assert len(changed) == 2, "tzdata's layer and the volatile last one"

    push(layered["archive"], f"{registry['host']}/osbuild/app:1")
    output = push(os.path.join(osbuild.output, "image2.tar"), f"{registry['host']}/osbuild/app:2")
    skipped = set(re.findall(r"Skipping blob (sha256:[0-9a-f]+) \(already present\)", output))
    uploaded = set(re.findall(r"PUT \S+/blobs/uploads/\S+digest=sha256%3A([0-9a-f]+)", output))
    assert skipped == set(first_layers) & set(second_layers) and len(skipped) == len(second_layers) - 2
    assert {d.split(":")[1] for d in changed} <= uploaded, "the changed layers were uploaded"
    assert not uploaded & {d.split(":")[1] for d in skipped}, "nothing unchanged was uploaded"
    stored = registry_blobs(registry["storage"])
    layer_blobs = stored & set(first_layers + second_layers)
    assert layer_blobs == set(first_layers) | set(second_layers), "every layer once, shared ones not twice"
    assert len(layer_blobs) == len(first_layers) + 2
