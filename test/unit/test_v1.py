"""Manifest format v1: ids, validation with paths, describe"""

import copy
import hashlib
import json

import pytest

from osbuild import meta
from osbuild.formats import v1
from test.conftest import REPO

INDEX = meta.Index(REPO)


def host_runner():
    return "org.osbuild.linux"


def stage_id(name, build, base, options):
    m = hashlib.sha256()
    for part in (name, build, base, options):
        m.update(json.dumps(part, sort_keys=True).encode())
    return m.hexdigest()


def load(description):
    result = v1.validate(description, INDEX)
    assert result.valid, [str(e) for e in result.errors]
    return v1.load(description, INDEX, host_runner)


def test_stage_ids_follow_osbuild():
    manifest = load({"pipeline": {
        "stages": [{"name": "org.osbuild.noop", "options": {"b": 1, "a": [2]}}, {"name": "org.osbuild.noop"}],
        "assembler": {"name": "org.osbuild.noop", "options": {"x": "y"}}}})
    first = stage_id("org.osbuild.noop", None, None, {"a": [2], "b": 1})
    second = stage_id("org.osbuild.noop", None, first, {})
    output = stage_id("org.osbuild.noop", None, second, {"x": "y"})
    assert [s.id for s in manifest.pipeline.stages] == [first, second]
    assert manifest.pipeline.tree_id == second
    assert manifest.pipeline.output_id == output == manifest.pipeline.id


def test_pinned_id_of_a_known_manifest():
    # the value osbuild computes for this stage: sha256 of '"org.osbuild.noop"' 'null' 'null' '{}'
    manifest = load({"pipeline": {"stages": [{"name": "org.osbuild.noop"}]}})
    expected = hashlib.sha256(b'"org.osbuild.noop"nullnull{}').hexdigest()
    assert manifest.pipeline.tree_id == expected


def test_nested_build_pipelines_ids():
    inner = {"stages": [{"name": "org.osbuild.noop", "options": {"level": 2}}]}
    middle = {"build": {"pipeline": inner, "runner": "org.osbuild.linux"},
              "stages": [{"name": "org.osbuild.noop", "options": {"level": 1}}]}
    manifest = load({"pipeline": {"build": {"pipeline": middle, "runner": "org.osbuild.debian12"},
                                  "stages": [{"name": "org.osbuild.noop"}]}})
    inner_id = stage_id("org.osbuild.noop", None, None, {"level": 2})
    middle_id = stage_id("org.osbuild.noop", inner_id, None, {"level": 1})
    assert manifest.pipeline.tree_id == stage_id("org.osbuild.noop", middle_id, None, {})
    assert [p.runner for p in manifest.pipelines()] == ["org.osbuild.linux", "org.osbuild.linux",
                                                        "org.osbuild.debian12"]


def test_assembler_gets_tree_input():
    manifest = load({"pipeline": {"stages": [{"name": "org.osbuild.noop"}],
                                  "assembler": {"name": "org.osbuild.noop"}}})
    tree_input = manifest.pipeline.assembler.inputs["tree"]
    assert tree_input.name == "org.osbuild.tree"
    assert tree_input.options == {"pipeline": {"id": manifest.pipeline.tree_id}}
    assert manifest.pipeline.assembler.base == manifest.pipeline.tree_id


def test_empty_manifest_is_valid():
    manifest = load({})
    assert manifest.pipeline.id is None


GOOD = {"pipeline": {"stages": [{"name": "org.osbuild.mkdir", "options": {"paths": [{"path": "/a"}]}}],
                     "assembler": {"name": "org.osbuild.oci-archive",
                                   "options": {"filename": "x.tar", "architecture": "amd64"}}}}


@pytest.mark.parametrize("change,path,message", [
    (lambda d: d["pipeline"]["stages"][0].update(name="org.osbuild.nope"),
     ".pipeline.stages[0].name", "unknown stage 'org.osbuild.nope'"),
    (lambda d: d["pipeline"]["assembler"]["options"].update(filename=3),
     ".pipeline.assembler.options.filename", "3 is not of type 'string'"),
    (lambda d: d["pipeline"]["assembler"]["options"].pop("filename"),
     ".pipeline.assembler.options", "'filename' is a required property"),
    (lambda d: d["pipeline"]["stages"][0]["options"]["paths"][0].update(mode="755"),
     ".pipeline.stages[0].options.paths[0].mode", "'755' is not of type 'integer'"),
    (lambda d: d["pipeline"].update(bogus=1),
     ".pipeline", "Additional properties are not allowed ('bogus' was unexpected)"),
    (lambda d: d["pipeline"].update(build={"pipeline": {}, "runner": "org.osbuild.nope"}),
     ".pipeline.build.runner", "unknown runner 'org.osbuild.nope'"),
    (lambda d: d.update(sources={"org.osbuild.nope": {}}),
     ".sources.org.osbuild.nope", "unknown source"),
    (lambda d: d["pipeline"]["stages"].append("text"),
     ".pipeline.stages[1]", "'text' is not of type 'object'"),
])
def test_validation_error_names_the_path(change, path, message):
    description = copy.deepcopy(GOOD)
    change(description)
    result = v1.validate(description, INDEX)
    assert [(e.id, message in e.message) for e in result.errors] == [(path, True)]


def test_validation_reports_all_errors_at_once():
    description = copy.deepcopy(GOOD)
    description["pipeline"]["stages"].append({"name": "org.osbuild.nope"})
    description["pipeline"]["assembler"]["options"]["compression"] = "lz4"
    description["pipeline"]["assembler"]["options"]["architecture"] = 64
    result = v1.validate(description, INDEX)
    assert sorted(str(e) for e in result.errors) == [
        ".pipeline.assembler.options.architecture: 64 is not of type 'string'",
        ".pipeline.assembler.options.compression: 'lz4' is not one of ['gzip', 'zstd', 'none']",
        f".pipeline.stages[1].name: unknown stage 'org.osbuild.nope': no stages/org.osbuild.nope in {REPO}",
    ]


def test_non_object_manifest():
    result = v1.validate([], INDEX)
    assert [e.id for e in result.errors] == [""]
    assert "is not of type 'object'" in result.errors[0].message


def test_describe_round_trips_with_ids():
    manifest = load(copy.deepcopy(GOOD))
    described = v1.describe(manifest, with_id=True)
    assert described["pipeline"]["stages"][0]["id"] == manifest.pipeline.tree_id
    assert described["pipeline"]["assembler"]["id"] == manifest.pipeline.output_id
    plain = v1.describe(manifest)
    assert plain == GOOD
