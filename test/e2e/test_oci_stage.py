"""The format-2 stage org.osbuild.oci-archive: difference layers through real clients, and under today's upstream

Upstream osbuild (f6b23dbc, vendored in test/data/upstream/) runs a format-2
manifest shaped like those osbuild/images writes: trees from pipelines,
then a `container` pipeline whose one stage is org.osbuild.oci-archive
with `base` and `layer.1` inputs, exported with `--export container`.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from test.conftest import REPO, load_module_script
from test.difftrees import EPOCH, make_base, make_second
from test.e2e.conftest import require_tools, run, umoci_unpack
from test.e2e.test_oci_archive_clients import describe_tree
from test.e2e.test_upstream import upstream

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.clients]


def expected(root):
    entries, links = describe_tree(root)
    for entry in entries.values():
        entry["mtime"] = min(entry["mtime"], EPOCH)
    return entries, links


@pytest.fixture(name="image", scope="module")
def fixture_image(tmp_path_factory):
    work = tmp_path_factory.mktemp("stage")
    base = make_base(str(work / "base"))
    second = make_second(base, str(work / "second"))
    stage = load_module_script(os.path.join(REPO, "stages", "org.osbuild.oci-archive"))
    out = work / "out"
    out.mkdir()
    inputs = {"base": {"path": base}, "layer.1": {"path": second}}
    options = {"filename": "image.tar", "architecture": "amd64", "tag": "diff:1"}
    assert stage.main(str(out), inputs, options, {"source-epoch": EPOCH}) == 0
    return {"work": work, "base": base, "second": second, "archive": str(out / "image.tar")}


def test_umoci_unpacks_exactly_the_second_tree(image, tmp_path):
    require_tools("umoci")
    rootfs = umoci_unpack(image["archive"], "diff:1", str(tmp_path))
    assert describe_tree(rootfs) == expected(image["second"])


def test_podman_unpacks_exactly_the_second_tree(image):
    require_tools("podman")
    storage = image["work"] / "podman"
    podman = ["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]
    run([*podman, "pull", "--quiet", f"oci-archive:{image['archive']}"])
    mountpoint = run([*podman, "image", "mount", "localhost/diff:1"]).strip()
    try:
        assert describe_tree(mountpoint) == expected(image["second"])
    finally:
        run([*podman, "image", "unmount", "localhost/diff:1"])


def tree_pipeline(name, which):
    script = f"python3 /run/osbuild/lib/stages/difftrees.py {which} \"$TREE\""
    return {"name": name, "stages": [{"type": "org.osbuild.test.shell", "options": {"script": script}}]}


MANIFEST = {
    "version": "2",
    "pipelines": [
        tree_pipeline("os", "base"),
        tree_pipeline("os-updated", "second"),
        {"name": "container", "source-epoch": EPOCH, "stages": [{
            "type": "org.osbuild.oci-archive",
            "options": {"architecture": "amd64", "filename": "container.tar",
                        "config": {"Cmd": ["/bin/sh"], "StopSignal": "SIGINT"},
                        "annotations": {"org.osbuild.ostree.layer": "0"}},
            "inputs": {
                "base": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline", "references": ["name:os"]},
                "layer.1": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                            "references": ["name:os-updated"]}}}]},
    ],
}


def test_upstream_today_runs_the_stage_in_a_format_2_manifest(image, tmp_path):
    require_tools("umoci")
    libdir = upstream(tmp_path, "today")
    shutil.copy2(os.path.join(REPO, "stages", "org.osbuild.oci-archive"), os.path.join(libdir, "stages"))
    shutil.copy2(os.path.join(REPO, "stages", "org.osbuild.oci-archive.meta.json"), os.path.join(libdir, "stages"))
    shutil.copy2(os.path.join(REPO, "test", "difftrees.py"), os.path.join(libdir, "stages"))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST), encoding="utf-8")
    argv = [sys.executable, "-m", "osbuild", "--libdir", libdir, "--store", str(tmp_path / "store"),
            "--output-directory", str(tmp_path / "out"), "--checkpoint", "os", "--export", "container",
            str(manifest)]
    proc = subprocess.run(argv, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=libdir), capture_output=True,
                          text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    archive = tmp_path / "out" / "container" / "container.tar"
    # no tag in the manifest osbuild/images writes: skopeo names it, umoci unpacks it
    require_tools("skopeo")
    run(["skopeo", "copy", "--quiet", f"oci-archive:{archive}", f"oci:{tmp_path / 'layout'}:named"])
    run(["umoci", "unpack", "--image", f"{tmp_path / 'layout'}:named", str(tmp_path / "bundle")])
    rootfs = tmp_path / "bundle" / "rootfs"
    assert describe_tree(str(rootfs)) == expected(image["second"])
    # the same bytes as the stage gives of the same trees (the pipeline's source-epoch, these options)
    stage = load_module_script(os.path.join(REPO, "stages", "org.osbuild.oci-archive"))
    ours = tmp_path / "ours"
    ours.mkdir()
    inputs = {"base": {"path": image["base"]}, "layer.1": {"path": image["second"]}}
    assert stage.main(str(ours), inputs, MANIFEST["pipelines"][2]["stages"][0]["options"],
                      {"source-epoch": EPOCH}) == 0
    assert (ours / "container.tar").read_bytes() == archive.read_bytes()
