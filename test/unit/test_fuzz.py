"""Fuzzed manifests (fixed seed): every one ends with exit 0 or 2, never a traceback,
and every exit-2 line says where the problem is"""

import os
import re
import subprocess
import sys

from test.conftest import REPO
from test.fuzz import cases, run_inspect

# a JSON path (".pipeline.stages[0].name", '["odd key"]', "." for the whole document) or a line and column
WHERE = re.compile(r': (\.|\[)\S*: |line \d+ column \d+')


def test_fuzzed_manifests_in_process(tmp_path):
    manifest = tmp_path / "m.json"
    outcomes = {0: 0, 2: 0}
    for n, case in enumerate(cases(400, seed=7)):
        manifest.write_bytes(case)
        code, _, err = run_inspect(str(manifest))  # an exception here fails the test
        assert code in outcomes, f"case {n}: exit {code}: {err}"
        outcomes[code] += 1
        if code == 2:
            for line in err.strip().splitlines():
                assert WHERE.search(line), f"case {n}: no location in {line!r}"
    assert outcomes[0] > 10 and outcomes[2] > 100, outcomes  # the fuzzer reaches both outcomes


def test_fuzzed_manifests_through_the_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    for n, case in enumerate(cases(12, seed=11)):
        proc = subprocess.run([sys.executable, "-m", "osbuild", "--libdir", REPO, "--inspect", "-"], input=case,
                              capture_output=True, env=env, timeout=60, check=False)
        assert proc.returncode in (0, 2), f"case {n}: {proc.stderr!r}"
        assert b"Traceback" not in proc.stderr
