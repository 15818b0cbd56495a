"""Manifest format 2 through this engine: ids and bytes as upstream's, builds, exports, checkpoints, errors"""

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import socketserver
import sys
import tarfile
import threading

import pytest

from test.conftest import REPO
from test.e2e.conftest import Runner, run
from test.e2e.test_engine import build_root_files
from test.e2e.test_oci_stage import MANIFEST as DIFF_MANIFEST
from test.e2e.test_upstream import upstream
from test.ocitools import Archive

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.needs_bwrap]


@pytest.fixture(name="libdir2", scope="module")
def fixture_libdir2(libdir, tmp_path_factory):
    """The e2e libdir, with the difference-layer trees' maker beside the test stages"""
    lib = tmp_path_factory.mktemp("libdir2") / "lib"
    shutil.copytree(libdir, lib, symlinks=True)
    shutil.copy2(os.path.join(REPO, "test", "difftrees.py"), lib / "stages")
    return str(lib)


@pytest.fixture(name="engine")
def fixture_engine(tmp_path, libdir2):
    return Runner(tmp_path, libdir2)


def shell2(script):
    return {"type": "org.osbuild.test.shell", "options": {"script": script}}


def stage_ids(description):
    return {p["name"]: [s["id"] for s in p.get("stages", [])] for p in description["pipelines"]}


def test_ids_and_bytes_are_upstreams(engine, tmp_path):
    """--inspect gives upstream's ids; the exported archive has upstream's bytes"""
    proc = engine(DIFF_MANIFEST, "--inspect", output=False)
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)
    proc = engine(DIFF_MANIFEST, "--checkpoint", "os", "--export", "container")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    archive = os.path.join(engine.output, "container", "container.tar")

    lib = upstream(tmp_path, "today")
    for name in ("org.osbuild.oci-archive", "org.osbuild.oci-archive.meta.json"):
        shutil.copy2(os.path.join(REPO, "stages", name), os.path.join(lib, "stages"))
    shutil.copy2(os.path.join(REPO, "test", "difftrees.py"), os.path.join(lib, "stages"))
    path = tmp_path / "manifest-upstream.json"
    path.write_text(json.dumps(DIFF_MANIFEST), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=lib)
    theirs = json.loads(run([sys.executable, "-m", "osbuild", "--libdir", lib, "--inspect", str(path)], cwd=tmp_path,
                            env=env))
    assert stage_ids(ours) == stage_ids(theirs)
    assert ours["pipelines"][2]["stages"][0]["inputs"] == theirs["pipelines"][2]["stages"][0]["inputs"]
    run([sys.executable, "-m", "osbuild", "--libdir", lib, "--store", str(tmp_path / "up-store"),
         "--output-directory", str(tmp_path / "up-out"), "--checkpoint", "os", "--export", "container", str(path)],
        cwd=tmp_path, env=env)
    with open(archive, "rb") as a, open(tmp_path / "up-out" / "container" / "container.tar", "rb") as b:
        assert a.read() == b.read()


def test_the_sample_builds_with_an_inline_source(engine):
    proc = engine(os.path.join(REPO, "samples", "busybox-oci-v2.json"), "--export", "container")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert os.listdir(engine.output) == ["container"]
    archive = Archive(os.path.join(engine.output, "container", "busybox.oci.tar"))
    assert archive.config["created"] == "2023-11-14T22:13:20Z", "the pipeline's source-epoch"
    with tarfile.open(fileobj=io.BytesIO(archive.layer_tar)) as tar:
        assert tar.extractfile("./etc/motd").read() == b"Built by osbuild from a format-2 manifest.\n"
    again = engine(os.path.join(REPO, "samples", "busybox-oci-v2.json"), "--export", "container")
    assert again.returncode == 0 and "org.osbuild.oci-archive: done" not in again.stdout, "served from the store"


def test_build_pipeline_runner_source_epoch_and_checkpoints(engine):
    marker = "/usr/share/osbuild-build-root-marker"
    build_stages = [
        {"type": "org.osbuild.copy", "options": {"paths": [{"from": p, "to": p} for p in build_root_files()]}},
        {"type": "org.osbuild.mkdir", "options": {"paths": [{"path": "/usr/share", "exist_ok": True}]}},
        {"type": "org.osbuild.write", "options": {"files": [{"path": marker, "content": "built\n"}]}},
    ]
    # only shell builtins in that build root
    check = shell2(f"read -r line < {marker}; echo \"$line $SOURCE_DATE_EPOCH\" > seen")
    manifest = {"version": "2", "pipelines": [
        {"name": "build", "runner": "org.osbuild.debian12", "stages": build_stages},
        {"name": "os", "build": "name:build", "source-epoch": 1234, "stages": [check, shell2("echo two > two")]},
    ]}
    described = json.loads(engine(manifest, "--inspect", output=False).stdout)
    build_id = described["pipelines"][0]["stages"][-1]["id"]
    assert described["pipelines"][1]["build"] == build_id
    proc = engine(manifest, "--export", "os", "--checkpoint", "org.osbuild.mkdir", "--checkpoint", "os")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    with open(os.path.join(engine.output, "os", "seen"), encoding="utf-8") as f:
        assert f.read() == "built 1234\n", "built in the build pipeline's tree, with the pipeline's source-epoch"
    refs = set(os.listdir(os.path.join(engine.store, "refs")))
    mkdir_id = described["pipelines"][0]["stages"][1]["id"]
    assert {mkdir_id, build_id, described["pipelines"][1]["stages"][-1]["id"]} <= refs
    assert described["pipelines"][1]["stages"][0]["id"] not in refs, "no checkpoint, not kept"


@pytest.mark.parametrize("change,where,message", [
    (lambda m: m["pipelines"][2]["stages"][0].update(devices={"disk": {"type": "org.osbuild.loopback"}}),
     ".pipelines[2].stages[0].devices", "devices are not supported by this engine"),
    (lambda m: m["pipelines"][2]["stages"][0].update(mounts=[{"name": "root", "type": "org.osbuild.ext4"}]),
     ".pipelines[2].stages[0].mounts", "mounts are not supported by this engine"),
    (lambda m: m["pipelines"][2]["stages"][0]["inputs"]["base"].update(type="org.osbuild.ostree"),
     ".pipelines[2].stages[0].inputs.base.type", "input type 'org.osbuild.ostree' is not supported"),
    (lambda m: m["pipelines"][2]["stages"][0]["inputs"]["base"].update(origin="org.osbuild.source"),
     ".pipelines[2].stages[0].inputs.base.origin", "come from origin 'org.osbuild.pipeline'"),
    (lambda m: m["pipelines"][2]["stages"][0]["inputs"]["base"].update(references=["name:nowhere"]),
     ".pipelines[2].stages[0].inputs.base.references", "'name:nowhere' names no earlier pipeline"),
    (lambda m: m["pipelines"][1].update(build="name:later"),
     ".pipelines[1].build", "'name:later' names no earlier pipeline"),
    (lambda m: m["pipelines"][1].update(name="os"),
     ".pipelines[1].name", "'os' is also the name of pipelines[0]"),
    (lambda m: m["pipelines"][2].update(name="../container"),
     ".pipelines[2].name", "does not match"),
    (lambda m: m.update(sources={"org.osbuild.ostree": {"items": {}}}),
     ".sources.org.osbuild.ostree", "source 'org.osbuild.ostree' is not supported"),
    (lambda m: m["pipelines"][2]["stages"][0]["options"].pop("filename"),
     ".pipelines[2].stages[0].options", "'filename' is a required property"),
    (lambda m: m["pipelines"][2]["stages"][0]["inputs"].update({"layer.0": m["pipelines"][2]["stages"][0]["inputs"]
                                                                ["base"]}),
     ".pipelines[2].stages[0].inputs", "layer.0"),
    (lambda m: m["pipelines"][0]["stages"][0].update(type="org.osbuild.nowhere"),
     ".pipelines[0].stages[0].type", "unknown stage 'org.osbuild.nowhere'"),
])
def test_what_is_not_supported_or_wrong_is_exit_2_with_its_path(engine, change, where, message):
    manifest = json.loads(json.dumps(DIFF_MANIFEST))
    change(manifest)
    proc = engine(manifest, "--export", "container")
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if where in line]
    assert lines and message in " ".join(lines), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(engine.store, "refs")) or not os.listdir(os.path.join(engine.store, "refs"))


def test_exports_and_checkpoints_that_match_nothing_fail(engine):
    proc = engine(DIFF_MANIFEST, "--export", "nowhere")
    assert proc.returncode == 1 and "--export nowhere: no pipeline of that name (the manifest has os, " \
        "os-updated, container)" in proc.stderr
    proc = engine(DIFF_MANIFEST, "--checkpoint", "zzz*", "--export", "container")
    assert proc.returncode == 1 and "matches no pipeline name, stage id or stage type" in proc.stderr
    proc = engine(DIFF_MANIFEST, "--export", "container", output=False)
    assert proc.returncode == 1 and "--export needs --output-directory" in proc.stderr
    proc = engine(DIFF_MANIFEST)
    assert proc.returncode == 0 and "nothing to build" in proc.stderr
    assert not os.path.exists(engine.output)


def test_format_1_refuses_export(engine):
    proc = engine({"pipeline": {}}, "--export", "tree")
    assert proc.returncode == 2 and "--export names pipelines of format-2 manifests" in proc.stderr


def test_json_result_of_a_format_2_build(engine):
    proc = engine(DIFF_MANIFEST, "--export", "container", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["success"] is True and result["type"] == "result"
    assert set(result["log"]) == {"os", "os-updated", "container"}
    meta = result["metadata"]["container"]["org.osbuild.oci-archive"]
    assert meta["filename"] == "container.tar" and len(meta["layers"]) == 2
    failing = json.loads(json.dumps(DIFF_MANIFEST))
    failing["pipelines"][0]["stages"][0]["options"]["script"] = "exit 3"
    proc = engine(failing, "--export", "container", "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["success"] is False and result["log"]["os"][0]["success"] is False


def test_curl_source_and_files_input(engine, tmp_path):
    payload = tmp_path / "payload.txt"
    payload.write_bytes(b"fetched by org.osbuild.curl\n")
    checksum = "sha256:" + hashlib.sha256(payload.read_bytes()).hexdigest()
    stage = {"type": "org.osbuild.copy",
             "inputs": {"files": {"type": "org.osbuild.files", "origin": "org.osbuild.source",
                                  "references": [checksum]}},
             "options": {"paths": [{"from": f"/run/osbuild/inputs/files/{checksum}", "to": "/etc/fetched"}]}}
    manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [stage]}],
                "sources": {"org.osbuild.curl": {"items": {checksum: {"url": f"file://{payload}"}}}}}
    proc = engine(manifest, "--export", "os")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    with open(os.path.join(engine.output, "os", "etc", "fetched"), "rb") as f:
        assert f.read() == b"fetched by org.osbuild.curl\n"
    wrong = "sha256:" + "0" * 64
    manifest["sources"]["org.osbuild.curl"]["items"] = {wrong: f"file://{payload}"}
    stage["inputs"]["files"]["references"] = [wrong]
    stage["options"]["paths"][0]["from"] = f"/run/osbuild/inputs/files/{wrong}"
    proc = engine(manifest, "--export", "os")
    assert proc.returncode == 1 and "checksum mismatch" in proc.stderr
    stage["inputs"]["files"]["references"] = ["sha256:" + "1" * 64]
    proc = engine(manifest, "--export", "os")
    assert proc.returncode == 2 and "is no item of the manifest's sources" in proc.stderr


def test_curl_source_over_http(engine, tmp_path):
    """An http:// item from a server on this machine's loopback, stopped by the test"""
    served = tmp_path / "served"
    served.mkdir()
    (served / "file.txt").write_bytes(b"over http\n")
    checksum = "sha256:" + hashlib.sha256(b"over http\n").hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/file.txt"
            stage = {"type": "org.osbuild.copy",
                     "inputs": {"f": {"type": "org.osbuild.files", "origin": "org.osbuild.source",
                                      "references": {checksum: {}}}},
                     "options": {"paths": [{"from": f"/run/osbuild/inputs/f/{checksum}", "to": "/got"}]}}
            manifest = {"version": "2", "pipelines": [{"name": "os", "stages": [stage]}],
                        "sources": {"org.osbuild.curl": {"items": {checksum: url}}}}
            proc = engine(manifest, "--export", "os")
        finally:
            server.shutdown()
            thread.join()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    with open(os.path.join(engine.output, "os", "got"), "rb") as f:
        assert f.read() == b"over http\n"


def test_build_pipeline_ids_are_upstreams(engine, tmp_path):
    manifest = {"version": "2", "pipelines": [
        {"name": "build", "runner": "org.osbuild.debian12", "stages": [shell2("true")]},
        {"name": "os", "build": "name:build", "source-epoch": 7, "stages": [shell2("echo a > a")]},
        {"name": "container", "build": "name:build", "stages": [{
            "type": "org.osbuild.oci-archive", "options": {"architecture": "arm64", "filename": "x.tar"},
            "inputs": {"base": {"type": "org.osbuild.tree", "origin": "org.osbuild.pipeline",
                                "references": {"name:os": {}}}}}]}]}
    ours = json.loads(engine(manifest, "--inspect", output=False).stdout)
    lib = upstream(tmp_path, "today")
    shutil.copy2(os.path.join(REPO, "stages", "org.osbuild.oci-archive.meta.json"), os.path.join(lib, "stages"))
    shutil.copy2(os.path.join(REPO, "stages", "org.osbuild.oci-archive"), os.path.join(lib, "stages"))
    if not os.path.exists(os.path.join(lib, "runners", "org.osbuild.debian12")):
        shutil.copy2(os.path.join(lib, "runners", "org.osbuild.linux"), os.path.join(lib, "runners",
                                                                                     "org.osbuild.debian12"))
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest), encoding="utf-8")
    theirs = json.loads(run([sys.executable, "-m", "osbuild", "--libdir", lib, "--inspect", str(path)],
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=lib)))
    assert stage_ids(ours) == stage_ids(theirs)
    assert [p.get("build") for p in ours["pipelines"]] == [p.get("build") for p in theirs["pipelines"]]
