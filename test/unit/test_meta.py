"""Module metadata read with ast; runner detection; schema validation helpers"""

import os

import jsonschema
import pytest

from osbuild import meta
from test.conftest import REPO

MODULES = [(klass, name) for klass in ("Stage", "Assembler", "Input", "Source")
           for name in meta.Index(REPO).list_modules(klass)]


def write_module(root, folder, name, text):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    with open(os.path.join(root, folder, name), "w", encoding="utf-8") as f:
        f.write(text)


@pytest.mark.parametrize("klass,name", MODULES)
def test_every_module_has_description_and_valid_schema(klass, name):
    info = meta.ModuleInfo.load(REPO, klass, name)
    assert info.summary and info.description.startswith(info.summary)
    schema = info.options_schema()
    jsonschema.Draft4Validator.check_schema(schema)
    if schema.get("additionalProperties") is not True:
        assert schema["additionalProperties"] is False
        for prop, spec in schema.get("properties", {}).items():
            assert "description" in spec, f"{name}: option {prop} has no description"


@pytest.mark.parametrize("klass,name", MODULES)
def test_every_module_is_executable_python3(klass, name):
    path = os.path.join(REPO, meta.FOLDERS[klass], name)
    assert os.access(path, os.X_OK)
    with open(path, encoding="utf-8") as f:
        assert f.readline() == "#!/usr/bin/python3\n"


def test_module_without_docstring_is_an_error(tmp_path):
    write_module(tmp_path, "stages", "org.osbuild.bad", "SCHEMA = '\"additionalProperties\": false'\n")
    with pytest.raises(meta.ModuleError, match="stages/org.osbuild.bad: the module has no docstring"):
        meta.ModuleInfo.load(tmp_path, "Stage", "org.osbuild.bad")


def test_computed_schema_is_an_error(tmp_path):
    write_module(tmp_path, "stages", "org.osbuild.bad", '"""Doc"""\nSCHEMA = "a" + "b"\n')
    with pytest.raises(meta.ModuleError, match="SCHEMA must be a plain string literal"):
        meta.ModuleInfo.load(tmp_path, "Stage", "org.osbuild.bad")


def test_broken_schema_json_is_an_error(tmp_path):
    write_module(tmp_path, "stages", "org.osbuild.bad", '"""Doc"""\nSCHEMA = """"a": """\n')
    info = meta.ModuleInfo.load(tmp_path, "Stage", "org.osbuild.bad")
    with pytest.raises(meta.ModuleError, match="SCHEMA is not valid JSON"):
        info.options_schema()


def test_module_is_never_imported(tmp_path):
    marker = tmp_path / "imported"
    write_module(tmp_path, "stages", "org.osbuild.x",
                 f'"""Summary\n\nMore."""\nopen({str(marker)!r}, "w")\nSCHEMA = """"required": ["a"]"""\n')
    info = meta.ModuleInfo.load(tmp_path, "Stage", "org.osbuild.x")
    assert info.summary == "Summary"
    assert info.options_schema()["required"] == ["a"]
    assert not marker.exists()


def test_unknown_module(tmp_path):
    with pytest.raises(meta.ModuleError, match="unknown stage 'org.osbuild.nope'"):
        meta.ModuleInfo.load(tmp_path, "Stage", "org.osbuild.nope")


@pytest.mark.parametrize("runners,distro,version,expected", [
    (["org.osbuild.debian12", "org.osbuild.debian13"], "debian", "12", "org.osbuild.debian12"),
    (["org.osbuild.debian12", "org.osbuild.debian13"], "debian", "14", "org.osbuild.debian13"),
    (["org.osbuild.fedora33", "org.osbuild.fedora35"], "fedora", "34", "org.osbuild.fedora33"),
    (["org.osbuild.rhel82", "org.osbuild.rhel84", "org.osbuild.rhel810"], "rhel", "8.6", "org.osbuild.rhel84"),
    (["org.osbuild.rhel82", "org.osbuild.rhel84", "org.osbuild.rhel810"], "rhel", "8.10", "org.osbuild.rhel810"),
])
def test_detect_runner(tmp_path, runners, distro, version, expected):
    for name in runners:
        write_module(tmp_path, "runners", name, '"""runner"""\n')
    assert meta.Index(tmp_path).detect_runner(distro, version) == expected


def test_detect_runner_names_what_is_missing(tmp_path):
    write_module(tmp_path, "runners", "org.osbuild.debian12", '"""runner"""\n')
    with pytest.raises(meta.ModuleError, match="neither org.osbuild.debian11 nor an older"):
        meta.Index(tmp_path).detect_runner("debian", "11")
    with pytest.raises(meta.ModuleError, match="org.osbuild.arch"):
        meta.Index(tmp_path).detect_runner("arch", "")


def test_repo_has_runner_for_this_host():
    release = meta.host_os_release()
    name = meta.Index(REPO).detect_runner(release.get("ID", "linux"), release.get("VERSION_ID", ""))
    assert os.path.isfile(os.path.join(REPO, "runners", name))


def test_json_path():
    assert meta.json_path(["pipeline", "stages", 2, "options", "filename"]) == ".pipeline.stages[2].options.filename"
    assert meta.json_path([]) == ""


HEAD_CASES = {
    "plain": ('#!/usr/bin/python3\n"""Doc line\n\nmore"""\nimport os\nSCHEMA = """\n"a": 1\n"""\n', '\n"a": 1\n'),
    "single quotes, last one wins": ("'''Doc'''\nSCHEMA = '''\"x\": 1'''\nSCHEMA = r'''\"y\": 2'''\n", '"y": 2'),
    "no schema": ('"""Doc only"""\n\ndef main():\n    pass\n', ""),
    # SCHEMA = \"\"\"...\"\"\" inside the docstring must not cut the module there
    "schema text in the docstring": ("'''Doc\nSCHEMA = \"\"\"\"a\": 1\"\"\"\n'''\nimport os\n", ""),
    "unclosed": ('"""Doc"""\nSCHEMA = """\n', None),
    "schema text in a string": ('"""Doc"""\nX = """\nSCHEMA = """\nSCHEMA = """"b": 3"""\n', '"b": 3'),
}


@pytest.mark.parametrize("case", sorted(HEAD_CASES))
def test_module_description_from_its_beginning_matches_the_whole(tmp_path, case):
    text, schema = HEAD_CASES[case]
    write_module(tmp_path, "stages", "org.osbuild.x", text)
    if schema is None:
        with pytest.raises(meta.ModuleError, match="not valid Python"):
            meta.ModuleInfo.load(str(tmp_path), "Stage", "org.osbuild.x")
        return
    info = meta.ModuleInfo.load(str(tmp_path), "Stage", "org.osbuild.x")
    assert info.summary.startswith("Doc")
    assert info._schema_body == schema  # pylint: disable=protected-access


def test_a_syntax_error_after_the_schema_is_left_to_the_run(tmp_path):
    write_module(tmp_path, "stages", "org.osbuild.x", '"""Doc"""\nSCHEMA = """"a": {}"""\ndef broken(:\n')
    info = meta.ModuleInfo.load(str(tmp_path), "Stage", "org.osbuild.x")
    assert info.opts == {"a": {}}
