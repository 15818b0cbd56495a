#!/usr/bin/python3
"""Run org.osbuild.oci-archive's code directly on a tree, without the engine

    assemble.py TREE OUTPUT_DIR OPTIONS_JSON [CACHE_DIR]

The same `main()` the sandboxed assembler runs, called in-process: the
difference to a run through `osbuild` is the engine's overhead. With a
CACHE_DIR the output is linked into it afterwards, as the engine does.
"""

import importlib.machinery
import importlib.util
import json
import os
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def load_assembler():
    sys.path.insert(0, REPO)  # for `import osbuild.api`
    path = os.path.join(REPO, "assemblers", "org.osbuild.oci-archive")
    loader = importlib.machinery.SourceFileLoader("oci_archive", path)
    spec = importlib.util.spec_from_loader("oci_archive", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main() -> int:
    tree, output, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cache = sys.argv[4] if len(sys.argv) > 4 else None
    output_id = uuid.uuid4().hex
    status = load_assembler().main(output, {"tree": {"path": tree}}, options, cache=cache, output_id=output_id)
    if status == 0 and cache:
        # what the engine does once it has committed the output
        from osbuild.objectstore import link_output  # noqa: PLC0415  pylint: disable=import-outside-toplevel
        link_output(os.path.abspath(cache), output_id, output)
    return status


if __name__ == "__main__":
    sys.exit(main())
