"""The engine end to end: builds under bubblewrap through the CLI"""

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time

import pytest

from test.conftest import REPO
from test.e2e.conftest import shell
from test.ocitools import Archive

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.needs_bwrap]

NOOP = os.path.join(REPO, "samples", "noop.json")
BUSYBOX = os.path.join(REPO, "samples", "busybox-oci.json")


def refs(osbuild):
    return sorted(os.listdir(os.path.join(osbuild.store, "refs")))


def test_noop_sample(osbuild):
    proc = osbuild(NOOP)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    described = json.loads(osbuild(NOOP, "--inspect").stdout)
    tree_id = described["pipeline"]["stages"][0]["id"]
    output_id = described["pipeline"]["assembler"]["id"]
    assert f"tree id: {tree_id}" in proc.stdout and f"output id: {output_id}" in proc.stdout
    assert refs(osbuild) == sorted([tree_id, output_id])
    assert os.listdir(os.path.join(osbuild.store, "tmp")) == []


def test_json_result_shape(osbuild):
    proc, result = osbuild.json(NOOP)
    assert proc.returncode == 0
    assert result["success"] is True
    stage = result["stages"][0]
    assert set(stage) >= {"name", "id", "options", "success", "output", "metadata", "error"}
    assert stage["name"] == "org.osbuild.noop" and stage["success"] is True and stage["error"] is None
    assert result["assembler"]["name"] == "org.osbuild.noop"


def test_json_has_durations(osbuild):
    slow = {"pipeline": {"stages": [shell("sleep 0.3")], "assembler": {"name": "org.osbuild.noop"}}}
    proc, result = osbuild.json(slow)
    assert proc.returncode == 0, proc.stderr
    stage, assembler = result["stages"][0], result["assembler"]
    assert 0.3 <= stage["duration"] < 30
    assert 0 < assembler["duration"] < 30
    assert result["duration"] >= stage["duration"] + assembler["duration"]
    assert f"done in {stage['duration']:.2f} s" in proc.stderr, "the log shows the same duration"


def test_rebuild_is_served_from_store(osbuild):
    assert osbuild(BUSYBOX).returncode == 0
    archive = os.path.join(osbuild.output, "busybox.oci.tar")
    with open(archive, "rb") as f:
        first = f.read()
    os.unlink(archive)
    before = refs(osbuild)
    proc, result = osbuild.json(BUSYBOX)
    assert proc.returncode == 0
    assert result["stages"] == [] and "assembler" not in result  # nothing ran
    assert "found in the store" in proc.stderr
    with open(archive, "rb") as f:
        assert f.read() == first
    assert refs(osbuild) == before


def test_export_is_a_hard_link_and_an_export_changed_in_place_is_rebuilt(osbuild):
    assert osbuild(BUSYBOX).returncode == 0
    archive = os.path.join(osbuild.output, "busybox.oci.tar")
    with open(archive, "rb") as f:
        first = f.read()
    stored = [os.path.join(osbuild.store, "objects", name, "busybox.oci.tar")
              for name in os.listdir(os.path.join(osbuild.store, "objects"))]
    assert os.stat(archive).st_ino in [os.stat(p).st_ino for p in stored if os.path.exists(p)], \
        "the export shares the store's file (no copy)"

    with open(archive, "ab") as f:  # e.g. `tar -rf` on the exported archive
        f.write(b"\0" * 1024)
    proc, result = osbuild.json(BUSYBOX)
    assert proc.returncode == 0, proc.stderr
    assert result["assembler"]["success"] is True, "the changed object was not served again"
    with open(archive, "rb") as f:
        assert f.read() == first
    objects = os.listdir(os.path.join(osbuild.store, "objects"))
    assert len(objects) == 2, f"the tree and one output, the damaged one removed: {objects}"


def test_stage_metadata_and_output_are_kept(osbuild):
    script = "python3 -c 'import osbuild.api as a; a.metadata({\"answer\": 42})'; echo hello from the stage"
    manifest = {"pipeline": {"stages": [shell(script)], "assembler": {"name": "org.osbuild.noop"}}}
    proc, result = osbuild.json(manifest)
    assert proc.returncode == 0, proc.stderr
    assert result["stages"][0]["metadata"] == {"answer": 42}
    assert "hello from the stage" in result["stages"][0]["output"]


def test_failing_stage_exit_1_and_nothing_kept(osbuild):
    manifest = {"pipeline": {"stages": [shell("echo working > file"), shell("echo oops >&2; exit 3")],
                             "assembler": {"name": "org.osbuild.noop"}}}
    proc, result = osbuild.json(manifest)
    assert proc.returncode == 1
    assert result["success"] is False
    assert [s["success"] for s in result["stages"]] == [True, False]
    assert "exited with status 3" in result["stages"][1]["error"]
    assert "oops" in result["stages"][1]["output"]
    assert refs(osbuild) == []
    assert os.listdir(os.path.join(osbuild.store, "tmp")) == []
    assert not os.path.exists(osbuild.output) or os.listdir(osbuild.output) == []
    human = osbuild(manifest)
    assert human.returncode == 1 and "build failed: org.osbuild.test.shell" in human.stderr


def test_failing_assembler_leaves_no_output(osbuild):
    manifest = {"pipeline": {"stages": [shell("mkdir etc")],
                             "assembler": {"name": "org.osbuild.oci-archive",
                                           "options": {"filename": "x.tar", "architecture": "amd64",
                                                       "config": {"Volumes": ["relative"]}}}}}
    proc = osbuild(manifest)
    assert proc.returncode == 1
    assert "Volumes 'relative': must be an absolute path" in proc.stdout
    assert not os.path.exists(osbuild.output) or os.listdir(osbuild.output) == []


def test_invalid_manifest_exit_2(osbuild):
    manifest = {"pipeline": {"assembler": {"name": "org.osbuild.oci-archive",
                                           "options": {"filename": "../escape.tar", "architecture": "amd64"}}}}
    proc = osbuild(manifest)
    assert proc.returncode == 2
    assert ".pipeline.assembler.options.filename" in proc.stderr
    assert not os.path.exists(osbuild.store)


def test_stage_cannot_write_outside_its_tree(osbuild, tmp_path):
    victims = ["/usr/osbuild-escape-test", "/etc/osbuild-escape-test", str(tmp_path / "escape")]
    script = "; ".join(f"(echo x > {v}) 2>/dev/null || echo blocked {v}" for v in victims)
    script += "; (echo x > ../escape-parent) 2>/dev/null || echo blocked parent; touch inside"
    proc, result = osbuild.json({"pipeline": {"stages": [shell(script)],
                                              "assembler": {"name": "org.osbuild.noop"}}})
    assert proc.returncode == 0, proc.stderr
    for victim in victims:
        assert not os.path.exists(victim)
    assert "blocked /usr/osbuild-escape-test" in result["stages"][0]["output"]
    tree = osbuild.tree({"pipeline": {"stages": [shell(script)]}})
    assert os.listdir(tree) == ["inside"]


def test_stage_has_no_network(osbuild):
    script = "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 22), timeout=2)'"
    proc = osbuild({"pipeline": {"stages": [shell(script)], "assembler": {"name": "org.osbuild.noop"}}})
    assert proc.returncode == 1


def test_checkpoint_keeps_intermediate_tree(osbuild):
    first = shell("echo one > one")
    described = json.loads(osbuild({"pipeline": {"stages": [first, shell("echo two > two")]}}, "--inspect").stdout)
    first_id = described["pipeline"]["stages"][0]["id"]
    proc = osbuild({"pipeline": {"stages": [first, shell("echo two > two")]}}, "--checkpoint", first_id,
                   output=False)
    assert proc.returncode == 0, proc.stderr
    assert first_id in refs(osbuild)
    tree = os.path.join(osbuild.store, "refs", first_id)
    assert sorted(os.listdir(tree)) == ["one"]
    # a different second stage starts from the stored first one
    proc = osbuild({"pipeline": {"stages": [first, shell("test -f one; echo three > three")]}},
                   "--checkpoint", first_id, output=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert f"stage {first_id}: found in the store" in proc.stdout


def test_interrupt_exits_130_and_cleans_up(osbuild):
    manifest = {"pipeline": {"stages": [shell("touch started; sleep 60")],
                             "assembler": {"name": "org.osbuild.noop"}}}
    proc = subprocess.Popen(osbuild.argv(manifest), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=osbuild.env())
    deadline = time.monotonic() + 60
    tmp = os.path.join(osbuild.store, "tmp")
    while time.monotonic() < deadline:
        if os.path.isdir(tmp) and any(
                os.path.exists(os.path.join(tmp, d, t, "started"))
                for d in os.listdir(tmp) if os.path.isdir(os.path.join(tmp, d))
                for t in os.listdir(os.path.join(tmp, d))):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert refs(osbuild) == [] and os.listdir(tmp) == []


def test_busybox_sample_builds_a_runnable_tree(osbuild):
    proc = osbuild(BUSYBOX)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert os.path.getsize(os.path.join(osbuild.output, "busybox.oci.tar")) > 100_000
    with open(BUSYBOX, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["pipeline"].pop("assembler")
    tree = osbuild.tree(manifest)
    assert os.readlink(os.path.join(tree, "usr", "bin", "sh")) == "busybox"
    out = subprocess.run([os.path.join(tree, "usr", "bin", "busybox"), "echo", "alive"], capture_output=True,
                         text=True, check=True).stdout
    assert out == "alive\n"


def build_root_files():
    """What a minimal build root needs: python3 with its stdlib, sh, their libraries"""
    paths = {"/usr/bin/python3", os.path.realpath("/usr/bin/python3"), "/usr/bin/sh", "/usr/bin/dash"}
    stdlib = os.path.dirname(subprocess.run(["/usr/bin/python3", "-c", "import os; print(os.__file__)"],
                                            capture_output=True, text=True, check=True).stdout.strip())
    paths.add(stdlib)
    binaries = [os.path.realpath("/usr/bin/python3"), "/usr/bin/dash"]
    dynload = os.path.join(stdlib, "lib-dynload")
    binaries += [os.path.join(dynload, n) for n in os.listdir(dynload) if n.endswith(".so")]
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            words = [w for w in line.split() if w.startswith("/")]
            if words:
                paths.add(words[0])
                paths.add(os.path.realpath(words[0]))
    merged = {"/usr" + p if p.startswith(("/lib/", "/lib64/", "/bin/")) else p for p in paths}
    return sorted(merged)


def test_build_pipeline_tree_is_the_build_root(osbuild):
    marker = "/usr/share/osbuild-build-root-marker"
    assert not os.path.exists(marker)
    build = {"stages": [
        {"name": "org.osbuild.copy", "options": {"paths": [{"from": p, "to": p} for p in build_root_files()]}},
        {"name": "org.osbuild.mkdir", "options": {"paths": [{"path": "/usr/share", "exist_ok": True}]}},
        {"name": "org.osbuild.write", "options": {"files": [{"path": marker, "content": "built\n"}]}},
    ]}
    # only shell builtins: the build root has no coreutils
    check = shell(f"read -r line < {marker}; echo \"$line\" > seen-in-build-root")
    manifest = {"pipeline": {"build": {"pipeline": build, "runner": "org.osbuild.debian12"},
                             "stages": [check], "assembler": {"name": "org.osbuild.noop"}}}
    proc, result = osbuild.json(manifest)
    assert proc.returncode == 0, proc.stderr
    assert [s["name"] for s in result["build"]["stages"]] == ["org.osbuild.copy", "org.osbuild.mkdir",
                                                             "org.osbuild.write"]
    tree = osbuild.tree({"pipeline": {"build": manifest["pipeline"]["build"], "stages": [check]}})
    with open(os.path.join(tree, "seen-in-build-root"), encoding="utf-8") as f:
        assert f.read() == "built\n"
    # the same stage on the host's build root fails: the marker is not there
    proc = osbuild({"pipeline": {"stages": [check], "assembler": {"name": "org.osbuild.noop"}}})
    assert proc.returncode == 1


def test_files_source_is_fetched_verified_and_visible(osbuild, tmp_path):
    payload = tmp_path / "payload.txt"
    payload.write_text("fetched by a source\n")
    checksum = "sha256:" + hashlib.sha256(payload.read_bytes()).hexdigest()
    copy = shell(f"cp /run/osbuild/sources/org.osbuild.files/{checksum} fetched.txt")
    manifest = {"pipeline": {"stages": [copy], "assembler": {"name": "org.osbuild.noop"}},
                "sources": {"org.osbuild.files": {"urls": {checksum: f"file://{payload}"}}}}
    proc = osbuild(manifest)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    tree = osbuild.tree({"pipeline": {"stages": [copy]}})
    with open(os.path.join(tree, "fetched.txt"), encoding="utf-8") as f:
        assert f.read() == "fetched by a source\n"
    wrong = "sha256:" + "0" * 64
    proc = osbuild({"pipeline": {"stages": [copy]},
                    "sources": {"org.osbuild.files": {"urls": {wrong: f"file://{payload}"}}}})
    assert proc.returncode == 1
    assert "checksum mismatch" in proc.stderr
    assert not os.path.exists(os.path.join(osbuild.store, "sources", "org.osbuild.files", wrong))


def test_json_failure_before_any_stage_is_still_json(osbuild):
    manifest = {"pipeline": {"stages": [shell("true")]},
                "sources": {"org.osbuild.files": {"urls": {"sha256:" + "1" * 64: "file:///nonexistent"}}}}
    proc, result = osbuild.json(manifest)
    assert proc.returncode == 1
    assert result["success"] is False and "source org.osbuild.files" in result["error"]


def test_contract_example_sources_validate(osbuild):
    proc = osbuild({"pipeline": {"stages": [{"name": "org.osbuild.noop"}]}, "sources": {"org.osbuild.files": {}}})
    assert proc.returncode == 0, proc.stderr


def test_readme_sources_route_a_fetched_file_copied_into_the_image(osbuild, tmp_path):
    """sources -> org.osbuild.copy from /run/osbuild/sources -> the file in the image"""
    payload = tmp_path / "motd"
    payload.write_text("fetched into the image\n")
    checksum = "sha256:" + hashlib.sha256(payload.read_bytes()).hexdigest()
    copy = {"name": "org.osbuild.copy", "options": {"paths": [
        {"from": f"/run/osbuild/sources/org.osbuild.files/{checksum}", "to": "/etc/motd"}]}}
    manifest = {"pipeline": {"stages": [copy], "assembler": {"name": "org.osbuild.oci-archive", "options": {
        "filename": "image.tar", "architecture": "amd64", "compression": "none"}}},
        "sources": {"org.osbuild.files": {"urls": {checksum: f"file://{payload}"}}}}
    proc = osbuild(manifest)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    archive = Archive(os.path.join(osbuild.output, "image.tar"))
    with tarfile.open(fileobj=io.BytesIO(archive.layer_tar)) as tar:
        assert tar.extractfile("./etc/motd").read() == b"fetched into the image\n"
    # the sandbox's own runtime stays refused, however it is named
    for source in ("/run/osbuild/api/osbuild", "/run/osbuild/lib", "/run",
                   "/run/osbuild/sources/../api/osbuild", "/proc/self/environ"):
        bad = {"pipeline": {"stages": [{"name": "org.osbuild.copy", "options": {"paths": [
            {"from": source, "to": "/x"}]}}], "assembler": {"name": "org.osbuild.noop"}}}
        proc = osbuild(bad)
        assert proc.returncode == 1, source
        assert "is refused" in proc.stdout + proc.stderr, source
