"""Kills, signals, full disks, concurrent builds and a bounded store, as a build service meets them

Each test runs real builds under bubblewrap and then looks at the store, the
output directory and /run the way a user would find them.
"""

import fcntl
import json
import os
import signal
import subprocess
import tarfile
import time

import pytest

from test.e2e.conftest import Runner, oci, shell

pytestmark = [pytest.mark.e2e, pytest.mark.needs_root, pytest.mark.needs_bwrap]

# about 24 MiB that compress a little: the assembler works for a moment
DATA = ("mkdir -p data && python3 -c 'import random; r = random.Random(7); "
        "[open(f\"data/{i}\", \"w\").write(r.randbytes(3000000).hex()) for i in range(4)]' && "
        "find . -exec touch -h -d @1600000000 {} +")
IMAGE = {"pipeline": {"stages": [shell(DATA)], "assembler": oci(**{"source-epoch": 1700000000})}}


def runtime_dirs():
    return {n for n in os.listdir("/run") if n.startswith("osbuild-run-")} if os.path.isdir("/run") else set()


def holders(names):
    """The processes with a descriptor open on /run/NAME (a failing test says who keeps a folder)"""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(link.startswith(f"/run/{name}") for link in links for name in names):
            found.append(f"{pid}: {cmdline[:200]}")
    return found or "nobody"


def check_store(osbuild):
    """Every ref names an object that is there; returns the refs"""
    refs_dir = os.path.join(osbuild.store, "refs")
    refs = sorted(os.listdir(refs_dir)) if os.path.isdir(refs_dir) else []
    for ref in refs:
        target = os.path.realpath(os.path.join(refs_dir, ref))
        assert os.path.isdir(target), f"ref {ref} points at nothing"
    return refs


def start(osbuild, manifest, *extra):
    """A build in its own session, as a service starts it"""
    return subprocess.Popen(osbuild.argv(manifest, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=osbuild.env(), start_new_session=True)


def assert_same_as_fresh_build(osbuild, manifest, tmp_path):
    """True when image.tar of `osbuild`'s output is byte for byte what an empty store builds"""
    fresh = Runner(tmp_path / "fresh", osbuild.libdir)
    os.makedirs(fresh.tmp)
    assert fresh(manifest).returncode == 0
    with open(os.path.join(osbuild.output, "image.tar"), "rb") as a, \
            open(os.path.join(fresh.output, "image.tar"), "rb") as b:
        return a.read() == b.read()


def wait_for_file(root, name, timeout=60):
    """Until a file `name` appears in a tree under `root` (a stage has reached it)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for dirpath, _, filenames in os.walk(root):
            if name in filenames:
                return dirpath
        time.sleep(0.05)
    raise AssertionError(f"{name} did not appear under {root}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_exits_128_plus_n_and_leaves_nothing(osbuild, signum):
    before = runtime_dirs()
    manifest = {"pipeline": {"stages": [shell("touch started; sleep 60")], "assembler": {"name": "org.osbuild.noop"}}}
    proc = start(osbuild, manifest)
    wait_for_file(os.path.join(osbuild.store, "tmp"), "started")
    os.killpg(proc.pid, signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert f"interrupted ({signal.Signals(signum).name})" in stderr and "Traceback" not in stderr
    assert check_store(osbuild) == []
    assert os.listdir(os.path.join(osbuild.store, "tmp")) == []
    assert runtime_dirs() == before
    assert not os.path.exists(osbuild.output) or os.listdir(osbuild.output) == []


def test_interrupt_during_startup_is_clean(osbuild):
    # after the interpreter's own start (~0.05 s), while osbuild imports and validates
    for delay in (0.1, 0.15, 0.2, 0.3):
        proc = start(osbuild, IMAGE, "--inspect")
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        # -SIGINT: the signal came before the interpreter set up its own
        # handling (nothing of osbuild ran); 130: ours; 0: it had finished
        assert proc.returncode in (0, 130, -signal.SIGINT), stderr
        assert "Traceback" not in stderr
        check_store(osbuild)


def test_killed_builds_leave_nothing_behind_the_next_build(osbuild, tmp_path):
    before = runtime_dirs()
    # kills at moments spread over a build, as long as a build takes on this machine
    os.makedirs(tmp_path / "timing")
    timing = Runner(tmp_path / "timing", osbuild.libdir)
    started = time.monotonic()
    assert timing(IMAGE).returncode == 0
    took = time.monotonic() - started
    leftovers = 0
    for delay in (0.2 * took, 0.4 * took, 0.6 * took, 0.8 * took):
        proc = start(osbuild, IMAGE)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        check_store(osbuild)  # a ref never points at a half-written object
        leftovers += len(os.listdir(os.path.join(osbuild.store, "tmp")))
        assert not [n for n in os.listdir(osbuild.output) if n != "image.tar"] if os.path.isdir(osbuild.output) \
            else True, "only complete outputs"
    assert leftovers > 0, "the kills left work behind for the next build to remove"
    # one more, of a build that is surely at work when it is killed
    other = {"pipeline": {"stages": [shell("touch started; sleep 60")], "assembler": oci()}}
    proc = start(osbuild, other)
    wait_for_file(os.path.join(osbuild.store, "tmp"), "started")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = osbuild(IMAGE)
    assert proc.returncode == 0, proc.stderr
    assert "leftovers of builds that died" in proc.stdout
    assert os.listdir(os.path.join(osbuild.store, "tmp")) == []
    assert runtime_dirs() == before, f"runtime folders left, held by: {holders(runtime_dirs() - before)}"
    assert os.listdir(osbuild.output) == ["image.tar"]
    assert_same_as_fresh_build(osbuild, IMAGE, tmp_path), "the rebuild after the kills is a clean build"


def test_stale_export_staging_is_removed_live_one_kept(osbuild):
    os.makedirs(osbuild.output)
    stale = os.path.join(osbuild.output, ".osbuild-export-image.tar-dead1234")
    live = os.path.join(osbuild.output, ".osbuild-export-image.tar-live1234")
    for folder in (stale, live):
        os.makedirs(folder)
        with open(os.path.join(folder, "image.tar"), "wb") as f:
            f.write(b"partial" * 1000)
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # an export that is still running
        small = {"pipeline": {"stages": [shell("echo hi > hi")], "assembler": oci()}}
        proc = osbuild(small)
        assert proc.returncode == 0, proc.stderr
        assert sorted(os.listdir(osbuild.output)) == [os.path.basename(live), "image.tar"]
    finally:
        os.close(fd)


def test_concurrent_builds_on_one_store(osbuild):
    slow = {"pipeline": {"stages": [shell("touch started; sleep 4; echo slow > file")], "assembler": oci()}}
    a = start(osbuild, slow)
    wait_for_file(os.path.join(osbuild.store, "tmp"), "started")
    # two more builds start while the first works: they must not take its work away
    b = start(osbuild, IMAGE, "--output-directory", osbuild.output + "-b")
    c = start(osbuild, IMAGE, "--output-directory", osbuild.output + "-c")
    for proc in (a, b, c):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    with open(osbuild.output + "-b/image.tar", "rb") as f1, open(osbuild.output + "-c/image.tar", "rb") as f2:
        assert f1.read() == f2.read()
    with tarfile.open(os.path.join(osbuild.output, "image.tar")) as tar:
        assert "index.json" in tar.getnames()
    check_store(osbuild)
    assert os.listdir(os.path.join(osbuild.store, "tmp")) == []


@pytest.fixture(name="small_disk")
def fixture_small_disk(tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_output_disk_is_one_clear_line(osbuild, small_disk):
    proc = osbuild(IMAGE, "--output-directory", str(small_disk / "out"))
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert f"no space left on device while exporting image.tar to {small_disk / 'out'}" in last, last
    assert "Traceback" not in proc.stderr and "Command '[" not in proc.stderr
    assert os.listdir(small_disk / "out") == [], "no partial archive, no staging folder"
    check_store(osbuild)


def test_full_store_disk_fails_clean(tmp_path, libdir, small_disk):
    osbuild = Runner(tmp_path, libdir)
    osbuild.store = str(small_disk / "store")
    proc = osbuild(IMAGE)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert check_store(osbuild) == []
    assert os.listdir(small_disk / "store" / "tmp") == []
    assert not os.path.exists(osbuild.output) or os.listdir(osbuild.output) == []


def object_sizes(osbuild):
    objects = os.path.join(osbuild.store, "objects")
    total = 0
    for name in os.listdir(objects):
        out = subprocess.run(["du", "-s", "--block-size=1", os.path.join(objects, name)], capture_output=True,
                             text=True, check=True).stdout
        total += int(out.split()[0])
    return total


def test_cache_max_size_keeps_the_store_bounded(osbuild):
    limit = 40 * 1024 * 1024  # one build of IMAGE (tree + archive) fits, two do not
    ids = []
    for n in range(3):
        manifest = {"pipeline": {"stages": [shell(DATA + f"; echo {n} > n")], "assembler": oci()}}
        proc, result = osbuild.json(manifest, "--cache-max-size", "40MiB")
        assert proc.returncode == 0, proc.stderr
        ids.append((result["tree_id"], result["output_id"]))
        refs = check_store(osbuild)
        assert {result["tree_id"], result["output_id"]} <= set(refs), "the current build's objects stay"
        assert object_sizes(osbuild) + cache_bytes(osbuild) <= limit, "the module cache counts too"
        assert os.path.isfile(os.path.join(osbuild.output, "image.tar"))
    refs = check_store(osbuild)
    assert not set(ids[0]) & set(refs), "the least recently used went first"
    assert "least recently used objects" in proc.stderr
    # without the option nothing is removed
    proc = osbuild({"pipeline": {"stages": [shell(DATA + "; echo 9 > n")], "assembler": oci()}})
    assert proc.returncode == 0
    assert set(ids[2]) <= set(check_store(osbuild))


def test_json_stays_one_document_when_interrupted(osbuild):
    manifest = {"pipeline": {"stages": [shell("touch started; sleep 60")], "assembler": {"name": "org.osbuild.noop"}}}
    proc = start(osbuild, manifest, "--json")
    wait_for_file(os.path.join(osbuild.store, "tmp"), "started")
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert json.loads(stdout)["success"] is False


HOSTILE = [
    {"name": "org.osbuild.write", "options": {"files": [{"path": "/no/such/dir/file", "content": "x"}]}},
    {"name": "org.osbuild.write", "options": {"files": [{"path": "tree:///../escape", "content": "x"}]}},
    {"name": "org.osbuild.copy", "options": {"paths": [{"from": "/", "to": "/all"}]}},
    {"name": "org.osbuild.copy", "options": {"paths": [{"from": "/proc/self/environ", "to": "/env"}]}},
    {"name": "org.osbuild.copy", "options": {"paths": [{"from": "/usr/bin/" + "x" * 4000, "to": "/x"}] * 3000}},
    {"name": "org.osbuild.mkdir", "options": {"paths": [{"path": "/" + "d/" * 2000}]}},
    {"name": "org.osbuild.ln", "options": {"paths": [{"target": "../../..", "link_name": "/a/b/c"}]}},
    {"name": "org.osbuild.ln", "options": {"paths": [{"target": "/etc", "link_name": "/..",
                                                      "symbolic": True}]}},
]


@pytest.mark.parametrize("stage", HOSTILE, ids=lambda s: s["name"].rsplit(".", 1)[1])
def test_hostile_valid_options_end_in_one_line(osbuild, stage):
    proc = osbuild({"pipeline": {"stages": [stage], "assembler": {"name": "org.osbuild.noop"}}})
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout
    if proc.returncode == 1:
        errors = [line for line in proc.stdout.splitlines() if ": error: " in line or "not found" in line]
        assert len(errors) == 1, proc.stdout
    check_store(osbuild)
    assert os.listdir(os.path.join(osbuild.store, "tmp")) == []


def cache_bytes(osbuild):
    """What the module cache takes beyond the objects (a file linked from an object counts once)"""
    cache = os.path.join(osbuild.store, "cache")
    objects = os.path.join(osbuild.store, "objects")
    stored = {os.lstat(os.path.join(d, n)).st_ino for d, _, names in os.walk(objects) for n in names}
    sizes = {}
    for d, _, names in os.walk(cache):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            if st.st_ino not in stored:
                sizes[st.st_ino] = st.st_blocks * 512
    return sum(sizes.values())


def test_rebuild_after_a_small_change_reuses_the_compressed_pieces(osbuild, tmp_path):
    osbuild.json(IMAGE)
    changed = {"pipeline": {"stages": [shell(DATA + "; echo one more > data/0a-new")],
                            "assembler": oci(**{"source-epoch": 1700000000})}}
    proc, result = osbuild.json(changed)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in result["assembler"]["output"].splitlines() if "pieces reused" in line)
    hits, total = (int(x) for x in line.split("oci-archive: ")[1].split(" pieces")[0].split(" of "))
    # changed: the piece with the directories (data/ has a new mtime), the one the new file joins
    # (after the tail of data/0), at most one more where the cuts resynchronize
    assert total >= 8 and hits >= total - 3, line
    assert_same_as_fresh_build(osbuild, changed, tmp_path), "reuse never changes the image"
    assert cache_bytes(osbuild) > 0


def test_read_only_cache_still_builds(osbuild, tmp_path):
    cache = os.path.join(osbuild.store, "cache", "org.osbuild.oci-archive")
    os.makedirs(cache)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", cache], check=True)
    try:
        proc, result = osbuild.json(IMAGE)
        assert proc.returncode == 0, proc.stderr
        assert "no cache of pieces (Read-only file system)" in result["assembler"]["output"]
    finally:
        subprocess.run(["umount", "-l", cache], check=False)


def test_full_disk_while_storing_a_checkpoint_says_what_and_where(tmp_path, libdir, small_disk):
    """(#17) cp's 'error copying .../object/./big' became: no space left on device while storing stage X"""
    osbuild = Runner(tmp_path, libdir)
    osbuild.store = str(small_disk / "store")
    first = shell("head -c 2500000 /dev/urandom > big")
    manifest = {"pipeline": {"stages": [first, shell("echo hi > small")]}}
    described = json.loads(osbuild(manifest, "--inspect", output=False).stdout)
    first_id = described["pipeline"]["stages"][0]["id"]
    proc = osbuild(manifest, "--checkpoint", first_id, output=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"osbuild: build failed: no space left on device while storing the tree of stage {first_id}", last
    assert "cp:" not in proc.stderr and "Traceback" not in proc.stderr
    assert check_store(osbuild) == [] and os.listdir(small_disk / "store" / "tmp") == []


def test_full_disk_inside_the_assembler_says_what(tmp_path, libdir, small_disk):
    osbuild = Runner(tmp_path, libdir)
    osbuild.store = str(small_disk / "store")
    manifest = {"pipeline": {"stages": [shell("head -c 2200000 /dev/urandom > big")], "assembler": oci()}}
    proc = osbuild(manifest)
    assert proc.returncode == 1
    log = proc.stdout + proc.stderr
    assert "oci-archive: error: no space left on device while writing image.tar" in log, log
    assert "[Errno" not in log and "Traceback" not in log
    assert os.listdir(small_disk / "store" / "tmp") == []
    assert not os.path.exists(osbuild.output) or os.listdir(osbuild.output) == []
