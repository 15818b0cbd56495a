"""osbuild-oci in-process: flags from the assembler's schema, the same bytes, errors and exit codes"""

import json
import os
import subprocess
import sys

import pytest

import ociarchive.build
from osbuild import meta, oci_cli
from test.conftest import REPO
from test.debtree import EPOCH, make_debian_tree, set_times
from test.ocitools import Archive


@pytest.fixture(name="schema", scope="module")
def fixture_schema():
    return meta.ModuleInfo.load(REPO, "Assembler", "org.osbuild.oci-archive").options_schema()


@pytest.fixture(name="tree")
def fixture_tree(tmp_path):
    root = make_debian_tree(str(tmp_path / "rootfs"))
    set_times(root, EPOCH)
    return root


def snapshot(root):
    """Every path of a tree with its metadata: what reading it must not change"""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def cli(argv, capsys, environ=None):
    code = oci_cli.run(argv, environ or {})
    out, err = capsys.readouterr()
    return code, out, err


def test_every_option_of_the_schema_has_a_flag(schema):
    """A new option in the assembler's SCHEMA fails here until the command can set it"""
    covered = {path for _, path, _, _ in oci_cli.FLAGS}
    for name, node in schema["properties"].items():
        if name == oci_cli.OUTPUT_OPTION:
            continue
        if node.get("type") == "object" and "properties" in node and (name,) not in covered:
            for sub in node["properties"]:
                assert (name, sub) in covered, f"option {name}.{sub} has no flag"
        else:
            assert (name,) in covered, f"option {name} has no flag"


def test_flags_take_help_and_choices_from_the_schema(schema):
    parser = oci_cli.make_parser(schema)
    actions = {a.option_strings[-1]: a for a in parser._actions if a.option_strings}  # noqa: SLF001
    assert actions["--compression"].choices == schema["properties"]["compression"]["enum"]
    assert actions["--architecture"].choices == schema["properties"]["architecture"]["enum"]
    assert schema["properties"]["tag"]["description"] in actions["--tag"].help
    assert actions["--level"].type is int


@pytest.mark.parametrize("extra", [
    [],
    ["--compression", "zstd", "--tag", "example/app:1", "--annotation", "a=b", "--annotation", "c=d=e"],
    ["--layers", "6", "--layer-path", "app=/opt/app", "--layer-path", "app=/srv", "--layer-path", "log=/var/log"],
    ["--compression", "none", "--config", '{"Cmd": ["/usr/bin/foo"], "ExposedPorts": ["80"]}',
     "--architecture", "aarch64", "--variant", "v8", "--level", "3"],
    ["--sbom", "--tag", "debtree:2"],
])
def test_the_command_writes_what_the_assembler_writes(oci_archive, schema, tree, tmp_path, capsys, extra):  # noqa: PLR0917
    before = snapshot(tree)
    os.makedirs(tmp_path / "cmd")
    arch = [] if "--architecture" in extra else ["--architecture", "amd64"]
    common = ["--source-epoch", str(EPOCH), *arch, *extra]
    code, out, err = cli([tree, "-o", str(tmp_path / "cmd" / "image.tar"), *common, "--json"], capsys)
    assert code == 0, err
    assert snapshot(tree) == before, "the folder is only read"
    options = oci_cli.options_from_args(oci_cli.make_parser(schema).parse_args([tree, "-o", "image.tar", *common]), {})
    os.makedirs(tmp_path / "module")
    seen = []
    assert oci_archive.main(str(tmp_path / "module"), {"tree": {"path": tree}}, options, metadata=seen.append) == 0
    for name in os.listdir(tmp_path / "module"):
        with open(tmp_path / "cmd" / name, "rb") as a, open(tmp_path / "module" / name, "rb") as b:
            assert a.read() == b.read(), f"{name}: the same bytes as the assembler"
    assert sorted(os.listdir(tmp_path / "cmd")) == sorted(os.listdir(tmp_path / "module"))
    result = json.loads(out)
    timings = ("seconds", "profile")
    assert {k: v for k, v in result.items() if k not in timings} == \
        {k: v for k, v in seen[0].items() if k not in timings}, "--json prints the assembler's result"
    assert set(result["profile"]) >= {"tar read", "hashing", "writing"}, "where the seconds went"
    archive = Archive(str(tmp_path / "cmd" / "image.tar"))
    assert result["manifest"] == archive.index["manifests"][0]["digest"]
    assert [layer["digest"] for layer in result["layers"]] == [d["digest"] for d in archive.manifest["layers"]]
    sbom = ["image.tar.spdx.json"] if "--sbom" in extra else []
    assert sorted(os.listdir(tmp_path / "cmd")) == ["image.tar", *sbom]


def test_defaults_architecture_of_the_host_and_epoch_from_the_environment(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(oci_cli, "host_architecture", lambda: "aarch64")
    code, _, err = cli([tree, "-o", str(tmp_path / "a.tar"), "-q"], capsys, {"SOURCE_DATE_EPOCH": "1700000000"})
    assert code == 0 and err == ""
    archive = Archive(str(tmp_path / "a.tar"))
    assert (archive.config["architecture"], archive.config["variant"]) == ("arm64", "v8")
    assert archive.config["created"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize("argv,message", [
    (["-o", "{out}/x.tar"], "the following arguments are required: ROOTFS"),
    (["{tree}"], "the following arguments are required: -o/--output"),
    (["{tree}/missing", "-o", "{out}/x.tar"], "ROOTFS '{tree}/missing': no such folder"),
    (["{tree}/etc/hostname", "-o", "{out}/x.tar"], "not a folder"),
    (["{tree}", "-o", "{out}/nowhere/x.tar"], "does not exist"),
    (["{tree}", "-o", "{out}"], "is a folder"),
    (["{tree}", "-o", "{tree}/opt/x.tar"], "inside ROOTFS, the archive would read itself"),
    (["{tree}", "-o", "{out}/x.tar", "--compression", "lz4"], "invalid choice: 'lz4'"),
    (["{tree}", "-o", "{out}/x.tar", "--level", "12"], "--level 12: gzip takes 1-9"),
    (["{tree}", "-o", "{out}/x.tar", "--level", "0"], "--level: 0 is less than the minimum of 1"),
    (["{tree}", "-o", "{out}/x.tar", "--layers", "1"], "--layers: 1 is less than the minimum of 2"),
    (["{tree}", "-o", "{out}/x.tar", "--layer-path", "app"], "--layer-path 'app': expected NAME=PATH"),
    (["{tree}", "-o", "{out}/x.tar", "--layer-path", "app=opt"], "--layer-path: 'opt' does not match"),
    (["{tree}", "-o", "{out}/x.tar", "--layer-path", "a=/x", "--layer-path", "b=/x"],
     "--layer-path: '/x' is also in item 0"),
    (["{tree}", "-o", "{out}/x.tar", "--annotation", "=v"], "--annotation '=v': expected KEY=VALUE"),
    (["{tree}", "-o", "{out}/x.tar", "--config", "{{nope"], "--config '{{nope': not valid JSON"),
    (["{tree}", "-o", "{out}/x.tar", "--config", "{out}/none.json"], "not a readable file"),
    (["{tree}", "-o", "{out}/x.tar", "--config", '{{"Cmd": "sh"}}'], "--config: 'sh' is not of type 'array'"),
    (["{tree}", "-o", "{out}/x.tar", "--config", '{{"ExposedPorts": ["x"]}}'], "expected PORT or PORT/tcp"),
    (["{tree}", "-o", "{out}/x.tar", "--tag", "a b"], "--tag: 'a b' does not match"),
    (["{tree}", "-o", "{out}/x.tar", "--architecture", "amd64", "--variant", "v7"], "not a variant of amd64"),
])
def test_bad_arguments_exit_2_with_one_line_each(tree, tmp_path, capsys, argv, message):
    out = str(tmp_path / "out")
    os.makedirs(out)
    argv = [a.format(tree=tree, out=out) for a in argv]
    code, stdout, err = cli(argv, capsys)
    assert code == 2
    assert message.format(tree=tree, out=out) in err
    assert stdout == "" and "Traceback" not in err
    assert all(line.startswith("osbuild-oci: ") for line in err.splitlines())
    assert os.listdir(out) == [], "nothing written"


def test_config_from_a_file(tree, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"Cmd": ["/usr/bin/foo"], "User": "1000"}), encoding="utf-8")
    code, _, err = cli([tree, "-o", str(tmp_path / "x.tar"), "--architecture", "amd64", "--config", str(path)], capsys)
    assert code == 0, err
    config = Archive(str(tmp_path / "x.tar")).config["config"]
    assert (config["Cmd"], config["User"]) == (["/usr/bin/foo"], "1000")


def test_a_failed_build_exits_1_and_leaves_nothing(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ociarchive.build, "layer_tar_argv", lambda root, epoch: ["sh", "-c", "exit 3"])
    out = tmp_path / "out"
    os.makedirs(out)
    code, stdout, err = cli([tree, "-o", str(out / "x.tar"), "--architecture", "amd64"], capsys)
    assert code == 1
    assert "osbuild-oci: error: create layer: sh exited with status 3" in err
    assert stdout == "" and os.listdir(out) == []


def test_json_into_a_closed_pipe_keeps_the_archive(tree, tmp_path):
    """`osbuild-oci ROOTFS -o A --json | true`: the archive is made, the report goes nowhere, quietly"""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads the report
    try:
        proc = subprocess.run([sys.executable, "-m", "osbuild.oci_cli", tree, "-o", str(tmp_path / "a.tar"), "--json",
                               "-q", "--architecture", "amd64", "--source-epoch", "1700000000"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, check=False,
                              env=dict(os.environ, PYTHONPATH=REPO))
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert Archive(str(tmp_path / "a.tar")).config["architecture"] == "amd64"
