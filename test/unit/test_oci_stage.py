"""The format-2 stage org.osbuild.oci-archive without a sandbox: inputs, difference layers, its meta.json"""

import io
import os
import subprocess
import sys
import tarfile

import pytest

from test.conftest import REPO, load_module_script
from test.debtree import make_debian_tree
from test.difftrees import CHANGED, EPOCH, PARENTS, UNCHANGED, WHITEOUTS, make_base, make_second
from test.ocitools import Archive, decompress
from test.unit.test_oci_layers import add_awkward_files

OPTIONS = {"filename": "image.tar", "architecture": "amd64"}


@pytest.fixture(name="stage", scope="module")
def fixture_stage():
    return load_module_script(os.path.join(REPO, "stages", "org.osbuild.oci-archive"))


@pytest.fixture(name="trees")
def fixture_trees(tmp_path):
    base = make_base(str(tmp_path / "base"))
    return base, make_second(base, str(tmp_path / "second"))


def layer_names(archive, index, compression="gzip"):
    blob = archive.blob(archive.manifest["layers"][index])
    with tarfile.open(fileobj=io.BytesIO(decompress(blob, compression)), mode="r:") as tar:
        return [info.name + ("/" if info.isdir() and info.name != "." else "") if info.name != "." else "./"
                for info in tar.getmembers()]


def build(stage, tmp_path, inputs, meta=None, **options):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    seen = []
    assert stage.main(str(out), {k: {"path": v, "data": {}} for k, v in inputs.items()}, dict(OPTIONS, **options),
                      meta or {}, metadata=seen.append) == 0
    return Archive(str(out / "image.tar")), seen[0]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_second_layer_holds_exactly_the_changes(stage, trees, tmp_path, compression):
    base, second = trees
    archive, result = build(stage, tmp_path, {"base": base, "layer.1": second}, {"source-epoch": EPOCH},
                            compression=compression)
    assert len(archive.manifest["layers"]) == len(archive.config["rootfs"]["diff_ids"]) == 2
    assert [h["created_by"] for h in archive.config["history"]] == \
        ["osbuild org.osbuild.oci-archive", "osbuild oci-archive: changes of input layer.1"]
    names = layer_names(archive, 1, compression)
    assert set(names) == CHANGED | PARENTS | WHITEOUTS
    assert not set(names) & UNCHANGED, "unchanged entries are not in the second layer"
    for whiteout in WHITEOUTS:  # each before what comes in its place
        replaced = whiteout.replace(".wh.", "")
        later = [n for n in names if n.rstrip("/") == replaced]
        assert all(names.index(whiteout) < names.index(n) for n in later)
    assert archive.config["created"] == "2020-09-13T12:26:40Z", "the pipeline's source-epoch"
    assert [layer["diff_id"] for layer in result["layers"]] == archive.config["rootfs"]["diff_ids"]


def test_layers_in_numeric_order_each_the_change_of_the_one_before(stage, trees, tmp_path):
    base, second = trees
    third = str(tmp_path / "third")
    subprocess.run(["cp", "-a", second, third], check=True)
    with open(os.path.join(third, "etc/keep"), "ab") as f:
        f.write(b"more\n")
    inputs = {"base": base, "layer.2": second, "layer.10": third}
    archive, _ = build(stage, tmp_path, inputs, {"source-epoch": EPOCH})
    history = [h["created_by"] for h in archive.config["history"]]
    assert history[1:] == ["osbuild oci-archive: changes of input layer.2",
                           "osbuild oci-archive: changes of input layer.10"]
    assert set(layer_names(archive, 2)) == {"./", "./etc/", "./etc/keep"}


def test_no_change_is_an_empty_layer(stage, trees, tmp_path):
    base, _ = trees
    archive, _ = build(stage, tmp_path, {"base": base, "layer.1": base})
    assert layer_names(archive, 1) == []


def test_base_alone_is_the_assemblers_archive(stage, oci_archive, trees, tmp_path):
    base, _ = trees
    build(stage, tmp_path, {"base": base}, {"source-epoch": EPOCH}, tag="x:1")
    os.makedirs(tmp_path / "assembler")
    assert oci_archive.main(str(tmp_path / "assembler"), {"tree": {"path": base}},
                            dict(OPTIONS, tag="x:1", **{"source-epoch": EPOCH})) == 0
    assert (tmp_path / "out" / "image.tar").read_bytes() == (tmp_path / "assembler" / "image.tar").read_bytes()


def test_base_alone_on_the_awkward_tree_is_the_assemblers_archive(stage, oci_archive, tmp_path):
    """Pax names and link names, sparse and big files, hard links, devices as root: the same bytes"""
    tree = make_debian_tree(str(tmp_path / "awkward"))
    add_awkward_files(tree)
    build(stage, tmp_path, {"base": tree}, {"source-epoch": EPOCH}, layers={})
    os.makedirs(tmp_path / "assembler")
    assert oci_archive.main(str(tmp_path / "assembler"), {"tree": {"path": tree}},
                            dict(OPTIONS, layers={}, **{"source-epoch": EPOCH})) == 0
    assert (tmp_path / "out" / "image.tar").read_bytes() == (tmp_path / "assembler" / "image.tar").read_bytes()


def test_same_trees_same_bytes(stage, trees, tmp_path):
    base, second = trees
    for run in ("a", "b"):
        os.makedirs(tmp_path / run)
        build(stage, tmp_path / run, {"base": base, "layer.1": second}, {"source-epoch": EPOCH})
    assert (tmp_path / "a" / "out" / "image.tar").read_bytes() == (tmp_path / "b" / "out" / "image.tar").read_bytes()


def test_unknown_inputs_are_refused(stage, trees, tmp_path):
    base, second = trees
    with pytest.raises(ValueError, match="inputs layer.x: only base and layer.N"):
        build(stage, tmp_path, {"base": base, "layer.x": second})
    with pytest.raises(ValueError, match="inputs: no base"):
        build(stage, tmp_path, {})


def test_meta_json_is_made_from_the_assemblers_schema():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "stage-meta"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
