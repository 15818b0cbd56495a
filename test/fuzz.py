"""Mutated manifests for fuzz tests (fixed seed): the CLI must answer each with 0, 1 or 2

`python3 -m test.fuzz [COUNT] [SEED]` runs COUNT cases through `osbuild
--inspect` in this process and prints what ended how.
"""

import contextlib
import copy
import io
import json
import os
import random
import sys
from typing import Any, Iterator, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = ["samples/busybox-oci.json", "samples/noop.json"]
LAYERED = {"pipeline": {"stages": [{"name": "org.osbuild.write",
                                    "options": {"files": [{"path": "/etc/x", "content": "x"}]}}],
                        "assembler": {"name": "org.osbuild.oci-archive",
                                      "options": {"filename": "x.tar", "architecture": "amd64",
                                                  "layers": {"max": 8, "paths": [{"name": "app",
                                                                                  "paths": ["/opt/app"]}]}}}},
           "sources": {}}

ODD_STRINGS = ["", ".", "..", "../../../../tmp/x", "/dev/zero", "/", "a\u0000b", "\ud800", "\U0001f600",
               " ", "org.osbuild.noop/..", "x" * 5000, "tree:///../etc", "/proc/self", "\n", "-rf"]
ODD_VALUES: List[Any] = [None, True, False, 0, -1, 2**63, 2**64 + 1, 1.5, -0.0, 1e308, "", [], {}, [[]], {"": {}},
                         "x" * 100000, list(range(2000)), {str(i): i for i in range(500)}]
TEXT_DAMAGE = ["truncate", "empty", "nan", "infinity", "bytes", "deep-array", "deep-object", "bigint", "dupkey",
               "bom", "nul"]


def _nodes(doc: Any, path: Tuple[Any, ...] = ()) -> Iterator[Tuple[Tuple[Any, ...], Any]]:
    yield path, doc
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _nodes(value, path + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _nodes(value, path + (i,))


def _set(doc: Any, path: Tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return doc


def _mutate_tree(rng: random.Random, doc: Any) -> Any:
    for _ in range(rng.randint(1, 3)):
        nodes = list(_nodes(doc))
        path, node = rng.choice(nodes)
        choice = rng.random()
        if choice < 0.35:
            doc = _set(doc, path, copy.deepcopy(rng.choice(ODD_VALUES)))
        elif choice < 0.65:
            doc = _set(doc, path, rng.choice(ODD_STRINGS))
        elif choice < 0.8 and isinstance(node, dict):
            node[rng.choice(ODD_STRINGS)] = copy.deepcopy(rng.choice(ODD_VALUES + ODD_STRINGS))
        elif choice < 0.9 and isinstance(node, dict) and node:
            key = rng.choice(sorted(node))
            node[rng.choice(ODD_STRINGS)] = node.pop(key)
        elif isinstance(node, list) and node:
            node.extend(copy.deepcopy(node) * rng.randint(1, 50))
        else:
            doc = _set(doc, path, copy.deepcopy(rng.choice(ODD_VALUES)))
    return doc


def _damage_text(rng: random.Random, text: str) -> bytes:  # noqa: PLR0911  # one return per kind
    kind = rng.choice(TEXT_DAMAGE)
    data = text.encode("utf-8", "surrogatepass")
    if kind == "truncate":
        return data[:rng.randint(0, max(0, len(data) - 1))]
    if kind == "empty":
        return b""
    if kind in ("nan", "infinity", "bigint"):
        token = {"nan": b"NaN", "infinity": b"-Infinity", "bigint": b"9" * rng.randint(4301, 20000)}[kind]
        return data.replace(b"0", token, 1) if b"0" in data else token
    if kind == "bytes":
        at = rng.randint(0, len(data))
        return data[:at] + bytes(rng.getrandbits(8) for _ in range(8)) + data[at:]
    if kind in ("deep-array", "deep-object"):
        depth = rng.randint(100, 100000)
        deep = b"[" * depth + b"]" * depth if kind == "deep-array" else b'{"a":' * depth + b"1" + b"}" * depth
        return data.replace(b"{}", deep, 1) if b"{}" in data else deep
    if kind == "dupkey":
        return data.replace(b'"pipeline":', b'"pipeline": 1, "pipeline":', 1)
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    return data.replace(b'"', b'"\\u0000', 1)


def cases(count: int, seed: int = 1) -> Iterator[bytes]:
    """`count` mutated manifests as bytes, the same for the same seed"""
    rng = random.Random(seed)
    bases = []
    for name in SEEDS:
        with open(os.path.join(REPO, name), encoding="utf-8") as f:
            bases.append(json.load(f))
    bases.append(LAYERED)
    for _ in range(count):
        doc = _mutate_tree(rng, copy.deepcopy(rng.choice(bases)))
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
        yield _damage_text(rng, text) if rng.random() < 0.3 else text.encode("utf-8", "surrogatepass")


def run_inspect(path: str) -> Tuple[int, str, str]:
    """`osbuild --inspect PATH` in this process: (exit status, stdout, stderr)"""
    from osbuild.main_cli import osbuild_cli  # noqa: PLC0415  # pylint: disable=import-outside-toplevel  # tests set sys.path first

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = osbuild_cli(["--libdir", REPO, "--inspect", path])
    return code, out.getvalue(), err.getvalue()


if __name__ == "__main__":
    import collections  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel
    import traceback  # pylint: disable=import-outside-toplevel

    total, fuzz_seed = int(sys.argv[1]) if len(sys.argv) > 1 else 3000, int(sys.argv[2]) if len(sys.argv) > 2 else 1
    outcomes: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as work:
        for n, case in enumerate(cases(total, fuzz_seed)):
            manifest = os.path.join(work, "m.json")
            with open(manifest, "wb") as f:
                f.write(case)
            try:
                status, _, _ = run_inspect(manifest)
                outcomes[f"exit {status}"] += 1
            except BaseException as e:  # pylint: disable=broad-except  # counted and shown: the defect we look for
                outcomes[f"crash {type(e).__name__}"] += 1
                print(f"case {n}: {type(e).__name__}: {e}"[:300])
                traceback.print_exc(limit=3)
    print(dict(outcomes))
