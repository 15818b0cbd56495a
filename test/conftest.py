"""Shared fixtures: module scripts loaded by path, the OCI spec's schemas"""

import importlib.machinery
import importlib.util
import json
import os
import sys
import types

import jsonschema
import pytest
import referencing
import referencing.jsonschema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# vendored copy of the image-spec schemas (see test/data/oci-image-spec/README.md)
SPEC_DIR = os.path.join(REPO, "test", "data", "oci-image-spec")

if REPO not in sys.path:
    sys.path.insert(0, REPO)


def load_module_script(path: str) -> types.ModuleType:
    """Import a module script (no .py suffix) by its path"""
    name = os.path.basename(path).replace(".", "_").replace("-", "_")
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(name="oci_archive", scope="session")
def fixture_oci_archive():
    return load_module_script(os.path.join(REPO, "assemblers", "org.osbuild.oci-archive"))


class SpecSchemas:
    """The OCI image-spec JSON schemas, resolved offline from SPEC_DIR"""

    FILES = {
        "index": "image-index-schema.json",
        "manifest": "image-manifest-schema.json",
        "config": "config-schema.json",
        "layout": "image-layout-schema.json",
    }

    def __init__(self, folder: str):
        self.folder = folder

        def retrieve(uri: str) -> referencing.Resource:
            name = uri.rstrip("/").rsplit("/", 1)[-1]
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                raise referencing.exceptions.NoSuchResource(ref=uri)
            with open(path, encoding="utf-8") as f:
                return referencing.jsonschema.DRAFT4.create_resource(json.load(f))

        self.registry = referencing.Registry(retrieve=retrieve)

    def validate(self, kind: str, document) -> None:
        with open(os.path.join(self.folder, self.FILES[kind]), encoding="utf-8") as f:
            schema = json.load(f)
        validator = jsonschema.Draft4Validator(schema, registry=self.registry,
                                               format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert not errors, f"{kind} does not validate against the OCI schema: {errors}"


@pytest.fixture(name="spec", scope="session")
def fixture_spec():
    if not os.path.isdir(SPEC_DIR):
        pytest.fail(f"the OCI image-spec schemas are missing: {SPEC_DIR}")
    return SpecSchemas(SPEC_DIR)
