#!/usr/bin/python3
"""Run org.osbuild.oci-archive's code directly on a tree, without the engine

    assemble.py TREE OUTPUT_DIR OPTIONS_JSON [CACHE_DIR]

The same `main()` the sandboxed assembler runs, called in-process: the
difference to a run through `osbuild` is the engine's overhead.
"""

import importlib.machinery
import importlib.util
import json
import os
import sys

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


if __name__ == "__main__":
    tree, output, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cache = sys.argv[4] if len(sys.argv) > 4 else None
    sys.exit(load_assembler().main(output, {"tree": {"path": tree}}, options, cache=cache))
