"""The command line without building: exit codes and messages for bad input"""

import json
import os
import subprocess
import sys

import pytest

from osbuild.main_cli import parse_size
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



@pytest.mark.parametrize("manifest", ["noop.json", "busybox-oci-v2.json"])
def test_inspect_into_a_closed_pipe_ends_quietly(manifest):
    """`osbuild --inspect M | head -c1`: the reader is gone; no traceback, SIGPIPE's status"""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write fails: nobody reads
    try:
        proc = subprocess.run([sys.executable, "-m", "osbuild", "--inspect", os.path.join(REPO, "samples", manifest)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, check=False,
                              env=dict(os.environ, PYTHONPATH=REPO))
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr

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


# --- manifests are data: module names never reach outside the libdir -----------------

@pytest.mark.parametrize("name,problem", [
    ("../../../../../../../../tmp/evilstage", "without '/'"),
    ("/dev/zero", "without '/'"),
    ("../../dev/zero", "without '/'"),
    (".hidden", "must not start with '.'"),
    ("a\u0000b", "without '/' or NUL"),
    ("\u200bx\u0007", "printable"),
])
@pytest.mark.parametrize("where", ["stage", "assembler", "source", "runner"])
def test_module_names_must_be_plain(name, problem, where):
    manifest = {"pipeline": {}}
    path = {"stage": ".pipeline.stages[0].name", "assembler": ".pipeline.assembler.name",
            "runner": ".pipeline.build.runner"}.get(where)
    if where == "stage":
        manifest["pipeline"]["stages"] = [{"name": name}]
    elif where == "assembler":
        manifest["pipeline"]["assembler"] = {"name": name}
    elif where == "runner":
        manifest["pipeline"]["build"] = {"pipeline": {}, "runner": name}
    else:
        manifest["sources"] = {name: {}}
    proc = osbuild("--inspect", "-", stdin=json.dumps(manifest))
    assert proc.returncode == 2, proc.stderr
    assert problem in proc.stderr and "Traceback" not in proc.stderr
    if path:
        assert f"{path}: " in proc.stderr


def test_module_file_must_be_a_regular_file_inside_the_libdir(tmp_path):
    libdir = tmp_path / "lib"
    libdir.mkdir()
    for folder in ("assemblers", "inputs", "runners", "sources"):
        if not (libdir / folder).exists():
            os.symlink(os.path.join(REPO, folder), libdir / folder)
    (libdir / "stages").mkdir()
    os.symlink("/dev/zero", libdir / "stages" / "org.osbuild.zero")
    outside = tmp_path / "outside"
    outside.write_text('"""Docstring"""\n')
    os.symlink(outside, libdir / "stages" / "org.osbuild.outside")
    for name, problem in (("org.osbuild.zero", "outside the libdir"), ("org.osbuild.outside", "outside the libdir")):
        manifest = {"pipeline": {"stages": [{"name": name}]}}
        proc = subprocess.run([sys.executable, "-m", "osbuild", "--libdir", str(libdir), "--inspect", "-"],
                              input=json.dumps(manifest), capture_output=True, text=True, timeout=30,
                              env=dict(os.environ, PYTHONPATH=REPO), check=False)
        assert proc.returncode == 2 and problem in proc.stderr, proc.stderr


@pytest.mark.parametrize("text,where", [
    ("[" * 10000 + "]" * 10000, "nested deeper than 64 levels at line 1 column 65"),
    ('{"a": NaN}', "NaN is not a JSON value at line 1 column 7"),
    ('{"a":\n  -Infinity}', "-Infinity is not a JSON value at line 2 column 3"),
    ('{"a": ' + "7" * 5000 + "}", "an integer of more than 4300 digits at line 1 column 7"),
    ('{"pipeline": {"stages": [{"name": "\\ud800"}]}}', ".pipeline.stages[0].name: a lone surrogate"),
    ('{"a": 1', "line 1 column 8"),
    ("", "line 1 column 1"),
])
def test_bad_json_says_where(text, where):
    proc = osbuild("--inspect", "-", stdin=text)
    assert proc.returncode == 2
    assert where in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_non_utf8_manifest_says_where(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b'{"a":\n "\xff"}')
    proc = osbuild("--inspect", str(path))
    assert proc.returncode == 2 and "byte 0xff at line 2 column 3" in proc.stderr


@pytest.mark.parametrize("size,expected", [("1000", 1000), ("500M", 500_000_000), ("20GiB", 20 * 2**30),
                                           ("1.5k", 1500), ("unlimited", None), ("3 MB", 3_000_000)])
def test_cache_max_size_parses(size, expected):
    assert parse_size(size) == expected


def test_cache_max_size_rejects_nonsense():
    proc = osbuild("--cache-max-size", "lots", "--inspect", NOOP)
    assert proc.returncode == 2 and "'lots' is not a size" in proc.stderr
