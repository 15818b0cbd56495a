"""The command line without building: exit codes and messages for bad input"""

import json
import os
import subprocess
import sys

import pytest

from test.conftest import REPO

NOOP = os.path.join(REPO, "samples", "noop.json")


def osbuild(*args, stdin=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "osbuild", *args], input=stdin, capture_output=True,
                          text=True, env=env, cwd=cwd, check=False)


def test_inspect_prints_ids():
    proc = osbuild("--inspect", NOOP)
    assert proc.returncode == 0, proc.stderr
    described = json.loads(proc.stdout)
    assert len(described["pipeline"]["stages"][0]["id"]) == 64
    assert len(described["pipeline"]["assembler"]["id"]) == 64


def test_manifest_from_stdin():
    with open(NOOP, encoding="utf-8") as f:
        proc = osbuild("--inspect", "-", stdin=f.read())
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["pipeline"]["stages"][0]["name"] == "org.osbuild.noop"


def test_nothing_to_do_without_output(tmp_path):
    proc = osbuild("--store", str(tmp_path / "store"), NOOP)
    assert proc.returncode == 0
    assert "nothing to do" in proc.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("content,message", [
    (None, "cannot read manifest"),
    ("{not json", "not valid JSON"),
    ('{"pipeline": {"stages": [{"name": "org.osbuild.nope"}]}}',
     ".pipeline.stages[0].name: unknown stage 'org.osbuild.nope'"),
    ('{"pipeline": {"assembler": {"name": "org.osbuild.oci-archive", "options": {"filename": 1}}}}',
     ".pipeline.assembler.options.filename: 1 is not of type 'string'"),
])
def test_bad_manifest_exit_2_one_line(tmp_path, content, message):
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_text(content)
    proc = osbuild("--store", str(tmp_path / "store"), "--output-directory", str(tmp_path / "out"), str(path))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_all_errors_reported(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"pipeline": {
        "stages": [{"name": "org.osbuild.nope"}, {"name": "org.osbuild.mkdir", "options": {}}],
        "assembler": {"name": "org.osbuild.oci-archive", "options": {"filename": "../x"}}}}))
    proc = osbuild("--json", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4, lines
    result = json.loads(proc.stdout)
    assert result["success"] is False
    assert sorted(e["path"] for e in result["errors"]) == [
        ".pipeline.assembler.options", ".pipeline.assembler.options.filename",
        ".pipeline.stages[0].name", ".pipeline.stages[1].options"]


def test_module_without_docstring(tmp_path):
    libdir = tmp_path / "lib"
    (libdir / "stages").mkdir(parents=True)
    (libdir / "runners").mkdir()
    (libdir / "stages" / "org.osbuild.nodoc").write_text("SCHEMA = ''\n")
    path = tmp_path / "m.json"
    path.write_text('{"pipeline": {"stages": [{"name": "org.osbuild.nodoc"}]}}')
    proc = osbuild("--libdir", str(libdir), "--inspect", str(path))
    assert proc.returncode == 2
    assert "stages/org.osbuild.nodoc: the module has no docstring" in proc.stderr


def test_missing_runner_is_named(tmp_path):
    libdir = tmp_path / "lib"
    (libdir / "runners").mkdir(parents=True)
    for folder in ("stages", "assemblers", "inputs"):
        os.symlink(os.path.join(REPO, folder), libdir / folder)
    proc = osbuild("--libdir", str(libdir), "--inspect", NOOP)
    assert proc.returncode == 2
    assert "no runner for this host" in proc.stderr and "org.osbuild." in proc.stderr


def test_unknown_checkpoint_exit_1(tmp_path):
    proc = osbuild("--store", str(tmp_path / "s"), "--checkpoint", "abc", NOOP)
    assert proc.returncode == 1
    assert "unknown checkpoint: abc" in proc.stderr
