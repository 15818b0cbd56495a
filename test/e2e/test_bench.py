"""The benchmark's smoke mode runs, so that bench/ cannot rot"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from test.conftest import REPO
from test.e2e.conftest import require, require_tools

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.needs_bwrap]


def test_bench_quick(tmp_path):
    require_tools("pigz", "zstd", "umoci", "buildah")
    require(importlib.util.find_spec("matplotlib") is not None, "matplotlib is not installed (the chart needs it)")
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run.py"), "--quick", "--output", str(out),
                           "--scratch", str(tmp_path / "scratch")], capture_output=True, text=True, check=False,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row for row in results["trees"][0]["rows"]}
    for name in ["ours: osbuild + oci-archive (gzip)", "ours: assembler alone (gzip)",
                 "ours: assembler alone (zstd)", "2021 algorithm (tar, sha256sum, gzip, sha256sum, tar)",
                 "floor: tar | tee(sha256) | pigz | tee(sha256)", "umoci (init, new, insert, tar)",
                 "buildah (from, copy, commit, push)"]:
        assert rows[name]["median_s"] > 0 and rows[name]["output_bytes"] > 0, name
    assert rows["floor: tar | tee(sha256) | pigz | tee(sha256)"]["vs_single_pass_floor"] == 1.0
    assert results["engine"]["stored_rebuild_s"] > 0
    assert "| ours: assembler alone (gzip) |" in (out / "results.md").read_text()
    assert (out / "ratios.png").stat().st_size > 1000


def test_rebuild_bench_runs_and_checks_its_bytes(tmp_path):
    """bench/rebuild.py on the tiny tree: every build through osbuild, each
    rebuild compared with a build without cache, the profile reported"""
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "rebuild.py"), "--trees", "tiny", "--runs", "1",
                           "--output", str(out), "--scratch", str(tmp_path / "scratch")],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads((out / "rebuild.json").read_text())
    assert result["tree"] == "tiny"
    assert all(result["median_s"][case] > 0 for case in ("first", "rebuild", "same tree", "floor"))
    assert result["rebuild_vs_first"] > 0 and result["rebuild_vs_floor"] > 0
    assert {"engine", "tar read", "hashing", "writing"} <= set(result["profile"]["rebuild"])
    assert "| tiny (" in (out / "rebuild.md").read_text()
