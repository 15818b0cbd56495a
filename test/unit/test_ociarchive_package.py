"""The ociarchive package's shape: one way imports, small modules, standard library only"""

import ast
import os
import re
import sys

import ociarchive
from test.conftest import REPO

PACKAGE = os.path.join(REPO, "ociarchive")


def modules():
    return sorted(name[:-3] for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py")


def imports(name):
    """(our modules it imports, top-level names of everything else it imports)"""
    with open(os.path.join(PACKAGE, f"{name}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    ours, others = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            ours.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            others.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            others.update(alias.name.split(".")[0] for alias in node.names)
    return ours, others


def test_the_docstring_lists_every_module_in_data_path_order_and_each_imports_only_those_above():
    listed = re.findall(r"^- `(\w+)`:", ociarchive.__doc__, flags=re.MULTILINE)
    assert sorted(listed) == modules(), "every module is described once"
    for position, name in enumerate(listed):
        ours, _ = imports(name)
        later = ours - set(listed[:position])
        assert not later, f"ociarchive.{name} imports {sorted(later)}, listed after it: imports go one way"


def test_standard_library_only():
    for name in modules():
        _, others = imports(name)
        foreign = {m for m in others if m not in sys.stdlib_module_names}
        assert not foreign, f"ociarchive.{name} imports {sorted(foreign)}: it must run in any build root"


def test_no_module_is_a_god_module():
    for name in modules():
        with open(os.path.join(PACKAGE, f"{name}.py"), encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        assert lines <= 500, f"ociarchive/{name}.py has {lines} lines"


def test_the_assembler_is_a_thin_door():
    with open(os.path.join(REPO, "assemblers", "org.osbuild.oci-archive"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    functions = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    assert functions == ["main"]
