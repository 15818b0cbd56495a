#!/usr/bin/python3
"""Benchmark org.osbuild.oci-archive side by side with its baselines

    python3 bench/run.py [--quick] [--tree DIR] [--trees small,usr,large]
                         [--runs N] [--output DIR] [--scratch DIR]

For each tree, every contender runs --runs times in alternating order;
reported are the median and minimum wall time, the ratios to the
single-pass floor and to the 2021 algorithm, the peak RSS of the whole
process tree, the output size and the peak extra disk space. Results go to
OUTPUT/results.{md,json} and a chart OUTPUT/ratios.png. Run as root.
"""

import argparse
import compileall
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

# this checkout's osbuild, whatever is installed
from osbuild.formats import v1  # noqa: E402  pylint: disable=wrong-import-position
from osbuild.meta import Index  # noqa: E402  pylint: disable=wrong-import-position
from osbuild.objectstore import ObjectStore  # noqa: E402  pylint: disable=wrong-import-position

PAGE = os.sysconf("SC_PAGE_SIZE")
NPROC = os.cpu_count() or 1
MIB = 1024 * 1024
EPOCH = 1700000000

# the layer tar of org.osbuild.oci-archive, used by the floors as well
TAR = ("tar --create --file=- --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "
       "--sort=name --numeric-owner --sparse --xattrs --xattrs-include=user.* "
       "--xattrs-include=security.capability --xattrs-include=security.ima --no-selinux --no-acls "
       f"--mtime=@{EPOCH} --clamp-mtime")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- trees ----------------------------------------------------------------------

def words(seed: int, size: int) -> bytes:
    """Text-like, compressible bytes"""
    vocabulary = [w.encode() for w in (
        "the of and to in is was for on that with as by at from this be or are an it not which have "
        "config value path system file user image layer build stage tree kernel package service").split()]
    out = bytearray()
    state = seed
    while len(out) < size:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        out += vocabulary[state % len(vocabulary)] + (b"\n" if state % 13 == 0 else b" ")
    return bytes(out[:size])


def make_small(path: str) -> None:
    """~50 MB: 6000 small text files in nested folders, a few binaries"""
    for i in range(6000):
        folder = os.path.join(path, "share", f"d{i % 40:02d}", f"e{i % 7}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"file{i:05d}.txt"), "wb") as f:
            f.write(words(i, 1024 + (i * 7919) % 12000))
    os.makedirs(os.path.join(path, "bin"))
    budget = 8 * MIB
    for name in sorted(os.listdir("/usr/bin")):
        source = os.path.join("/usr/bin", name)
        if os.path.isfile(source) and not os.path.islink(source) and os.path.getsize(source) < 4 * MIB:
            shutil.copy2(source, os.path.join(path, "bin", name))
            budget -= os.path.getsize(source)
            if budget <= 0:
                break
    with open(os.path.join(path, "bin", "random.bin"), "wb") as f:
        f.write(os.urandom(2 * MIB))


def make_usr(path: str, limit: int) -> None:
    """The host's /usr, in name order, up to `limit` bytes of file data"""
    selected: List[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk("/usr"):
        dirnames.sort()
        selected.append(os.path.relpath(dirpath, "/"))
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in sorted(filenames) + links:
            full = os.path.join(dirpath, name)
            try:
                size = os.lstat(full).st_size
            except OSError:
                continue
            if total + size > limit:
                continue
            selected.append(os.path.relpath(full, "/"))
            total += size
        if total >= limit * 0.98:
            break
    listing = "\0".join(selected).encode()
    with subprocess.Popen(["tar", "--create", "--file=-", "--directory=/", "--no-recursion", "--null",
                           "--files-from=-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as pack:
        with subprocess.Popen(["tar", "--extract", "--file=-", f"--directory={path}"], stdin=pack.stdout) as unpack:
            assert pack.stdin and pack.stdout
            pack.stdout.close()
            pack.stdin.write(listing)
            pack.stdin.close()
            if pack.wait() not in (0, 1) or unpack.wait() != 0:
                raise RuntimeError("copying /usr failed")


def make_large(path: str, usr: str) -> None:
    """`usr` plus 700 MB of large files of different compressibility"""
    subprocess.run(["cp", "-a", "--reflink=auto", usr, os.path.join(path, "usr")], check=True)
    data = os.path.join(path, "data")
    os.makedirs(data)
    with open(os.path.join(data, "random.bin"), "wb") as f:
        for _ in range(200):
            f.write(os.urandom(MIB))
    with open(os.path.join(data, "text.log"), "wb") as f:
        for i in range(250):
            f.write(words(i, MIB))
    with open(os.path.join(data, "mixed.img"), "wb") as f:
        for i in range(150):
            f.write(os.urandom(MIB // 2) + words(i, MIB // 2))
    with open(os.path.join(data, "zeros.img"), "wb") as f:
        for _ in range(100):
            f.write(b"\0" * MIB)


def make_minbase(path: str) -> None:
    """Debian 12 minbase, as debootstrap makes it (needs apt's mirror)"""
    subprocess.run(["debootstrap", "--variant=minbase", "bookworm", path, "http://deb.debian.org/debian"],
                   check=True, stdout=subprocess.DEVNULL)


def make_many(path: str) -> None:
    """100,000 small files in 1,000 folders, owned by 500 dpkg packages: the layers' bookkeeping"""
    info = os.path.join(path, "var", "lib", "dpkg", "info")
    os.makedirs(info)
    lists: Dict[int, List[str]] = {}
    for i in range(100_000):
        folder = os.path.join("usr", "share", f"p{i % 1000:04d}")
        os.makedirs(os.path.join(path, folder), exist_ok=True)
        with open(os.path.join(path, folder, f"f{i:06d}"), "wb") as f:
            f.write(words(i, 200 + i % 700))
        lists.setdefault(i % 500, []).append(f"/{folder}/f{i:06d}")
    with open(os.path.join(path, "var", "lib", "dpkg", "status"), "w", encoding="utf-8") as status:
        for package, files in lists.items():
            status.write(f"Package: pkg{package}\nStatus: install ok installed\nArchitecture: all\n\n")
            with open(os.path.join(info, f"pkg{package}.list"), "w", encoding="utf-8") as f:
                f.write("\n".join(files) + "\n")


def tree_size(path: str) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def prepare_trees(scratch: str, names: List[str], usr_limit: int, quick: bool) -> Dict[str, str]:
    trees = {}
    for name in names:
        path = os.path.join(scratch, "trees", name)
        done = path + ".done"
        if not os.path.exists(done):
            log(f"bench: making tree {name} in {path} (once; kept for later runs)")
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
            if name == "small":
                make_small(path)
            elif name == "tiny":
                os.makedirs(os.path.join(path, "etc"))
                for i in range(200):
                    with open(os.path.join(path, "etc", f"f{i}"), "wb") as f:
                        f.write(words(i, 4096))
                shutil.copy2("/usr/bin/tar", os.path.join(path, "tar"))
            elif name == "usr":
                make_usr(path, usr_limit)
            elif name == "minbase":
                make_minbase(path)
            elif name == "many":
                make_many(path)
            elif name == "share":  # the host's /usr/share, all of it
                subprocess.run(["cp", "-a", "/usr/share", os.path.join(path, "share")], check=True)
            elif name == "large":
                make_large(path, prepare_trees(scratch, ["usr"], usr_limit, quick)["usr"])
            with open(done, "w", encoding="utf-8"):
                pass
        trees[name] = path
    return trees


# --- measuring ------------------------------------------------------------------

def descendants_rss(root: int) -> int:
    """Sum of the RSS of `root` and all its descendants, in bytes"""
    children: Dict[int, List[int]] = {}
    rss: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def used_disk(path: str) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def measure(argv: List[str], workdir: str, env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Run argv; wall time, peak RSS of its process tree, peak disk growth"""
    subprocess.run(["sync"], check=True)
    disk_before = used_disk(workdir)
    peak = {"rss": 0, "disk": 0}
    start = time.monotonic()
    env = env or dict(os.environ, PYTHONPATH=REPO)  # this checkout's osbuild, not an installed one
    proc = subprocess.Popen(  # pylint: disable=consider-using-with  # waited for by communicate()
        argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], descendants_rss(proc.pid))
            peak["disk"] = max(peak["disk"], used_disk(workdir) - disk_before)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    wall = time.monotonic() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]}... failed ({proc.returncode}): {stderr.decode(errors='replace')[-2000:]}")
    subprocess.run(["sync"], check=True)
    peak["disk"] = max(peak["disk"], used_disk(workdir) - disk_before)
    return {"wall": wall, "rss": peak["rss"], "disk": peak["disk"]}


# --- contenders -----------------------------------------------------------------

class Contender:
    """Something that turns a tree into an archive (or a floor that only streams)"""

    def __init__(self, name: str, argv: Callable[[str, str], List[str]], output: str,
                 setup: Optional[Callable[[str, str], None]] = None, note: str = ""):
        self.name = name
        self.argv = argv
        self.output = output
        self.setup = setup
        self.note = note


def bash(script: str) -> List[str]:
    return ["bash", "-o", "pipefail", "-c", script]


def ours_options(compression: str, level: Optional[int] = None) -> Dict[str, Any]:
    return {"filename": "image.tar", "architecture": "amd64", "compression": compression,
            "source-epoch": EPOCH, "tag": "bench", **({"compression-level": level} if level else {})}


ENGINE_STAGE = {"name": "org.osbuild.noop", "options": {"bench": "tree"}}


def engine_manifest(compression: str, level: Optional[int] = None, layered: bool = False) -> Dict[str, Any]:
    options = dict(ours_options(compression, level), **({"layers": {}} if layered else {}))
    assembler = {"name": "org.osbuild.oci-archive", "options": options}
    return {"pipeline": {"stages": [ENGINE_STAGE], "assembler": assembler}}


def engine_setup(tree: str, workdir: str, level: Optional[int] = None, layered: bool = False) -> None:
    """Seed the store with the tree as the output of the manifest's stage"""
    manifest = v1.load(engine_manifest("gzip"), Index(REPO), lambda: "org.osbuild.linux")
    store = ObjectStore(os.path.join(workdir, "store"))
    if not store.contains(manifest.pipeline.tree_id):
        store.commit(tree, manifest.pipeline.tree_id)
    # drop earlier outputs so that the assembler runs every time
    for ref in os.listdir(store.refs):
        if ref != manifest.pipeline.tree_id:
            target = store.resolve(ref)
            os.unlink(os.path.join(store.refs, ref))
            if target:
                shutil.rmtree(target)
    # and the assembler's piece cache: every run is a first assembly
    shutil.rmtree(os.path.join(store.path, "cache"), ignore_errors=True)
    with open(os.path.join(workdir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(engine_manifest("gzip", level, layered), f)


def contenders(have_umoci: bool, have_buildah: bool) -> List[Contender]:
    python = sys.executable
    env_python = [python]

    def engine_argv(_tree: str, _work: str) -> List[str]:  # run in `work`, on what engine_setup made there
        return [*env_python, "-m", "osbuild", "--libdir", REPO, "--store", "store", "--output-directory", "out",
                "manifest.json"]

    items = [
        Contender("ours: osbuild + oci-archive (gzip)",
                  engine_argv,
                  "out/image.tar", setup=engine_setup, note="whole build through the engine, tree from the store"),
        Contender(ENGINE_LEVEL3,
                  engine_argv,
                  "out/image.tar", setup=lambda tree, work: engine_setup(tree, work, 3),
                  note="the same with compression-level 3: faster, the output still no larger than umoci's "
                       "or buildah's"),
        Contender(ENGINE_LAYERED,
                  engine_argv,
                  "out/image.tar", setup=lambda tree, work: engine_setup(tree, work, layered=True),
                  note="the same with `layers: {}`: split by the tree's package database, at most 16 layers"),
        Contender("ours: osbuild-oci (gzip)",
                  lambda tree, work: [python, "-m", "osbuild.oci_cli", tree, "-o", "image.tar", "-q",
                                      "--architecture", "amd64", "--source-epoch", str(EPOCH), "--tag", "bench"],
                  "image.tar", note="the command: a folder straight to an archive, no manifest, store or sandbox"),
        Contender("ours: assembler alone (gzip)",
                  lambda tree, work: [python, os.path.join(HERE, "assemble.py"), tree, ".",
                                      json.dumps(ours_options("gzip"))], "image.tar"),
        Contender("ours: assembler alone, empty cache (gzip)",
                  lambda tree, work: [python, os.path.join(HERE, "assemble.py"), tree, ".",
                                      json.dumps(ours_options("gzip")), "cache"], "image.tar",
                  note="with an empty piece cache, as every first build through the engine"),
        Contender("ours: assembler alone, layered (gzip)",
                  lambda tree, work: [python, os.path.join(HERE, "assemble.py"), tree, ".",
                                      json.dumps(dict(ours_options("gzip"), layers={}))], "image.tar",
                  note="layers by package (dpkg/rpm database of the tree), at most 16"),
        Contender("ours: assembler alone (zstd)",
                  lambda tree, work: [python, os.path.join(HERE, "assemble.py"), tree, ".",
                                      json.dumps(ours_options("zstd"))], "image.tar"),
        Contender("ours: assembler alone (none)",
                  lambda tree, work: [python, os.path.join(HERE, "assemble.py"), tree, ".",
                                      json.dumps(ours_options("none"))], "image.tar"),
        Contender("2021 algorithm (tar, sha256sum, gzip, sha256sum, tar)",
                  lambda tree, work: [python, os.path.join(HERE, "legacy2021.py"), tree, ".", "image.tar"],
                  "image.tar"),
        Contender("floor: tar | pigz",
                  lambda tree, work: bash(f"{TAR} -C '{tree}' . | pigz -p{NPROC} -n -6 > layer.gz"), "layer.gz"),
        Contender("floor: tar | tee(sha256) | pigz | tee(sha256)",
                  lambda tree, work: bash(f"{TAR} -C '{tree}' . | tee >(sha256sum > diff_id) | pigz -p{NPROC} -n -6 "
                                          "| tee >(sha256sum > digest) > layer.gz"), "layer.gz"),
        Contender("floor: tar | zstd -T0",
                  lambda tree, work: bash(f"{TAR} -C '{tree}' . | zstd -q -T0 -3 > layer.zst"), "layer.zst"),
        Contender("floor: tar > /dev/null (reading the tree)",
                  lambda tree, work: bash(f"{TAR} -C '{tree}' . | cat > /dev/null"), ""),
    ]
    if have_umoci:
        items.append(Contender(
            "umoci (init, new, insert, tar)",
            lambda tree, work: bash(f"umoci init --layout L && umoci new --image L:bench && "
                                    f"umoci insert --image L:bench '{tree}' / && tar -cf image.tar -C L ."),
            "image.tar"))
    if have_buildah:
        storage = "--storage-driver vfs --root bh/root --runroot bh/run"
        items.append(Contender(
            "buildah (from, copy, commit, push)",
            lambda tree, work: bash(f"c=$(buildah {storage} from scratch) && buildah {storage} copy --quiet $c "
                                    f"'{tree}' / && buildah {storage} commit --quiet $c bench >/dev/null && "
                                    f"buildah {storage} push --quiet bench oci-archive:image.tar:bench"),
            "image.tar"))
    return items


SINGLE_PASS = "floor: tar | tee(sha256) | pigz | tee(sha256)"
ENGINE = "ours: osbuild + oci-archive (gzip)"
ENGINE_LEVEL3 = "ours: osbuild + oci-archive (gzip level 3)"
ENGINE_LAYERED = "ours: osbuild + oci-archive, layered (gzip)"
ALONE = "ours: assembler alone (gzip)"
ALONE_CACHE = "ours: assembler alone, empty cache (gzip)"
LAYERED = "ours: assembler alone, layered (gzip)"
COMMAND = "ours: osbuild-oci (gzip)"
UMOCI = "umoci (init, new, insert, tar)"
BUILDAH = "buildah (from, copy, commit, push)"
BASELINE = "2021 algorithm (tar, sha256sum, gzip, sha256sum, tar)"


def run_tree(name: str, tree: str, scratch: str, runs: int, items: List[Contender]) -> Dict[str, Any]:
    size = tree_size(tree)
    log(f"bench: tree {name}: {size / MIB:.0f} MiB, {len(items)} contenders x {runs} runs")
    samples: Dict[str, List[Dict[str, float]]] = {c.name: [] for c in items}
    outputs: Dict[str, int] = {}
    for run in range(runs):
        order = items if run % 2 == 0 else list(reversed(items))
        for contender in order:
            work = os.path.join(scratch, "work", name, str(items.index(contender)))
            if contender.setup is None:
                shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work, exist_ok=True)
            if contender.setup:
                contender.setup(tree, work)
                shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
            result = measure(contender.argv(tree, work), work)
            if contender.output:
                outputs[contender.name] = os.path.getsize(os.path.join(work, contender.output))
                result["disk"] = max(0, result["disk"] - outputs[contender.name])
            samples[contender.name].append(result)
            log(f"  {contender.name}: {result['wall']:.2f} s")
            if contender.setup is None:
                shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(os.path.join(scratch, "work", name), ignore_errors=True)
    rows = []
    # references left out with --only give no ratio
    floor = statistics.median(s["wall"] for s in samples[SINGLE_PASS]) if samples.get(SINGLE_PASS) else None
    baseline = statistics.median(s["wall"] for s in samples[BASELINE]) if samples.get(BASELINE) else None
    for contender in items:
        walls = [s["wall"] for s in samples[contender.name]]
        median = statistics.median(walls)
        rows.append({
            "name": contender.name,
            "median_s": round(median, 3),
            "min_s": round(min(walls), 3),
            "vs_single_pass_floor": round(median / floor, 3) if floor else None,
            "vs_2021": round(median / baseline, 3) if baseline else None,
            "speedup_vs_2021": round(baseline / median, 2) if baseline else None,
            "peak_rss_mib": round(max(s["rss"] for s in samples[contender.name]) / MIB, 1),
            "output_bytes": outputs.get(contender.name),
            "peak_extra_disk_mib": round(max(s["disk"] for s in samples[contender.name]) / MIB, 1),
            "note": contender.note,
        })
    medians = {row["name"]: row["median_s"] for row in rows}

    def ratio(a: str, b: str) -> Optional[float]:
        return round(medians[a] / medians[b], 3) if a in medians and b in medians else None

    return {"tree": name, "path": tree, "bytes": size, "runs": runs, "rows": rows,
            "engine_vs_alone": ratio(ENGINE, ALONE), "engine_vs_alone_cache": ratio(ENGINE, ALONE_CACHE),
            "cold_cache_vs_none": ratio(ALONE_CACHE, ALONE), "layered_vs_single": ratio(LAYERED, ALONE),
            "engine_layered_vs_single": ratio(ENGINE_LAYERED, ENGINE),
            "command_vs_alone": ratio(COMMAND, ALONE), "umoci_vs_command": ratio(UMOCI, COMMAND),
            "buildah_vs_command": ratio(BUILDAH, COMMAND), "umoci_vs_engine": ratio(UMOCI, ENGINE),
            "buildah_vs_engine": ratio(BUILDAH, ENGINE), "umoci_vs_engine_level3": ratio(UMOCI, ENGINE_LEVEL3),
            "buildah_vs_engine_level3": ratio(BUILDAH, ENGINE_LEVEL3)}


def engine_overhead(scratch: str, runs: int) -> Dict[str, float]:
    """A no-op manifest end to end, and a rebuild whose output is stored"""
    work = os.path.join(scratch, "work", "engine")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    argv = [sys.executable, "-m", "osbuild", "--libdir", REPO, "--store", "store", "--output-directory", "out",
            os.path.join(REPO, "samples", "noop.json")]
    fresh, stored = [], []
    for _ in range(runs):
        shutil.rmtree(os.path.join(work, "store"), ignore_errors=True)
        fresh.append(measure(argv, work)["wall"])
        stored.append(measure(argv, work)["wall"])
    shutil.rmtree(work, ignore_errors=True)
    return {"noop_build_s": round(statistics.median(fresh), 3), "stored_rebuild_s": round(statistics.median(stored), 3)}


# --- rebuilds: the piece cache --------------------------------------------------

def inserted_path(tree: str) -> str:
    """Where B's small file goes: in the middle of the tree's top folders, one level down where it can"""
    names = sorted(os.listdir(tree))
    middle = os.path.join(tree, names[len(names) // 2])
    if os.path.isdir(middle) and not os.path.islink(middle):
        inner = sorted(os.listdir(middle))
        if inner and os.path.isdir(os.path.join(middle, inner[len(inner) // 2])):
            middle = os.path.join(middle, inner[len(inner) // 2])
        return os.path.join(middle, "osbuild-bench-inserted")
    return os.path.join(tree, "osbuild-bench-inserted")


def upgraded_copy(tree: str, scratch: str) -> str:
    """A copy of a dpkg tree where one package (sed) has new contents and a new status"""
    copy = os.path.join(scratch, "trees", os.path.basename(tree) + "-upgraded")
    if not os.path.isdir(copy):
        subprocess.run(["cp", "-a", tree, copy], check=True)
        with open(os.path.join(copy, "var/lib/dpkg/info/sed.list"), encoding="utf-8") as f:
            for line in f:
                path = os.path.realpath(os.path.join(copy, line.strip().lstrip("/")))
                if path.startswith(copy + "/") and os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "ab") as g:
                        g.write(b"\n# upgraded\n")
        status = os.path.join(copy, "var/lib/dpkg/status")
        with open(status, encoding="utf-8") as f:
            text = f.read()
        with open(status, "w", encoding="utf-8") as f:
            f.write(text.replace("Package: sed\n", "Package: sed\nX-Upgraded: yes\n", 1))
    return copy


def incremental(name: str, tree: str, scratch: str, runs: int) -> Dict[str, Any]:
    """First assembly and rebuilds after a small change, without, with a cold and a warm cache"""
    work = os.path.join(scratch, "work", "incremental")
    cache = os.path.join(work, "cache")
    assemble = os.path.join(HERE, "assemble.py")
    options = ours_options("gzip")
    layered = dict(options, layers={})
    has_dpkg = os.path.isfile(os.path.join(tree, "var/lib/dpkg/status"))
    inserted = inserted_path(tree)

    def one(opts: Dict[str, Any], source: str, with_cache: bool, empty: bool, insert: bool = False) -> float:
        shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
        os.makedirs(os.path.join(work, "out"))
        if empty:
            shutil.rmtree(cache, ignore_errors=True)
        argv = [sys.executable, assemble, source, "out", json.dumps(opts)] + ([cache] if with_cache else [])
        if insert:
            with open(inserted, "w", encoding="utf-8") as f:
                f.write("a small change\n")
        try:
            return measure(argv, work)["wall"]
        finally:
            if insert:
                os.unlink(inserted)

    scenarios: Dict[str, List[float]] = {}
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    for _ in range(runs):
        scenarios.setdefault("first assembly, no cache (as before)", []).append(one(options, tree, False, False))
        scenarios.setdefault("first assembly, cold cache", []).append(one(options, tree, True, True))
        scenarios.setdefault("same tree, warm cache", []).append(one(options, tree, True, False))
        scenarios.setdefault("one small file added in the middle, warm cache", []).append(
            one(options, tree, True, False, insert=True))
        scenarios.setdefault("one small file added in the middle, no cache", []).append(
            one(options, tree, False, False, insert=True))
        if has_dpkg:
            upgraded = upgraded_copy(tree, scratch)
            scenarios.setdefault("layered: first assembly, cold cache", []).append(one(layered, tree, True, True))
            scenarios.setdefault("layered: one package upgraded, warm cache", []).append(
                one(layered, upgraded, True, False))
            scenarios.setdefault("layered: one package upgraded, no cache", []).append(
                one(layered, upgraded, False, False))
        log(f"bench: incremental {name}: " + ", ".join(f"{k}: {v[-1]:.2f} s" for k, v in scenarios.items()))
    shutil.rmtree(work, ignore_errors=True)
    cold = statistics.median(scenarios["first assembly, cold cache"])
    return {"tree": name, "bytes": tree_size(tree), "runs": runs,
            "rows": [{"name": k, "median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
                      "vs_cold_first": round(statistics.median(v) / cold, 3)} for k, v in scenarios.items()]}


def save_results(output: str, stem: str, results: Any, text: str) -> str:
    """OUTPUT/STEM.json and OUTPUT/STEM.md; returns the text"""
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(output, f"{stem}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


def incremental_markdown(results: List[Dict[str, Any]]) -> str:
    lines = ["# oci-archive rebuilds with the piece cache", ""]
    for tree in results:
        lines += [f"## Tree `{tree['tree']}`: {tree['bytes'] / MIB:.0f} MiB, {tree['runs']} runs", "",
                  "| scenario | median s | min s | × first assembly (cold cache) |", "|---|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['vs_cold_first']:.2f} |"
                  for r in tree["rows"]]
        lines.append("")
    return "\n".join(lines)


# --- reporting ------------------------------------------------------------------

def markdown(results: Dict[str, Any]) -> str:
    lines = [f"# oci-archive benchmark, {results['date']}", "",
             f"Machine: {results['machine']}; {results['cpus']} CPUs; runs per contender: "
             f"{results['trees'][0]['runs'] if results['trees'] else 0} (median, alternating order).", ""]
    for tree in results["trees"]:
        lines += [f"## Tree `{tree['tree']}`: {tree['bytes'] / MIB:.0f} MiB", "",
                  "| contender | median s | min s | × single-pass floor | × 2021 | speed-up vs 2021 | "
                  "peak RSS MiB | output MiB | peak extra disk MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in tree["rows"]:
            out = f"{row['output_bytes'] / MIB:.1f}" if row["output_bytes"] is not None else "-"
            name = row["name"].replace("|", "\\|")
            ratios = " | ".join("-" if row[key] is None else f"{row[key]:.2f}"
                                for key in ("vs_single_pass_floor", "vs_2021", "speedup_vs_2021"))
            lines.append(f"| {name} | {row['median_s']:.2f} | {row['min_s']:.2f} | {ratios} | "
                         f"{row['peak_rss_mib']:.0f} | {out} | {row['peak_extra_disk_mib']:.0f} |")
        lines.append("")
        for key, text in (("engine_vs_alone", "Through `osbuild` / assembler alone"),
                          ("engine_vs_alone_cache", "Through `osbuild` / assembler alone with an empty cache "
                                                    "(the engine's own cost)"),
                          ("cold_cache_vs_none", "Assembler alone, empty cache / no cache (a first build's "
                                                 "cost of filling the cache)"),
                          ("layered_vs_single", "Assembler alone, layered / one layer"),
                          ("engine_layered_vs_single", "Through `osbuild`, layered / one layer (empty cache)"),
                          ("command_vs_alone", "osbuild-oci / assembler alone (the command's own cost)"),
                          ("umoci_vs_command", "umoci / osbuild-oci (a folder to an archive: how much faster ours is)"),
                          ("buildah_vs_command", "buildah / osbuild-oci"),
                          ("umoci_vs_engine", "umoci / through `osbuild`"),
                          ("buildah_vs_engine", "buildah / through `osbuild`"),
                          ("umoci_vs_engine_level3", "umoci / through `osbuild` at compression-level 3"),
                          ("buildah_vs_engine_level3", "buildah / through `osbuild` at compression-level 3")):
            if tree.get(key):
                lines.append(f"- {text}: {tree[key]:.3f}")
        lines.append("")
    engine = results["engine"]
    lines += ["## Engine", "", f"- no-op manifest, fresh store: {engine['noop_build_s']:.2f} s",
              f"- rebuild served from the store: {engine['stored_rebuild_s']:.2f} s", ""]
    return "\n".join(lines)


def chart(results: Dict[str, Any], path: str) -> bool:
    try:
        # optional: the chart is skipped without it
        import matplotlib  # noqa: PLC0415  pylint: disable=import-outside-toplevel
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415  pylint: disable=import-outside-toplevel
    except ImportError:
        log("bench: matplotlib is not installed, no chart (pip install matplotlib)")
        return False
    trees = results["trees"]
    if not any(r["vs_single_pass_floor"] is not None for tree in trees for r in tree["rows"]):
        log("bench: no chart: the single-pass floor was not run (--only)")
        return False
    fig, axes = plt.subplots(len(trees), 1, figsize=(11, 1.2 + 0.45 * len(trees[0]["rows"]) * len(trees)),
                             squeeze=False)
    for ax, tree in zip(axes[:, 0], trees):
        rows = [r for r in tree["rows"] if r["vs_single_pass_floor"] is not None]
        names = [r["name"] for r in rows]
        values = [r["vs_single_pass_floor"] for r in rows]
        colors = ["tab:green" if n.startswith("ours") else "tab:gray" if n.startswith("floor")
                  else "tab:red" if n.startswith("2021") else "tab:blue" for n in names]
        ax.barh(names, values, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_title(f"tree {tree['tree']} ({tree['bytes'] / MIB:.0f} MiB): wall time / single-pass gzip floor "
                     "(lower is faster)")
        for i, value in enumerate(values):
            ax.text(value, i, f" {value:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny tree, one run: a smoke test")
    parser.add_argument("--tree", metavar="DIR", help="benchmark this tree instead")
    parser.add_argument("--trees", default="small,usr,large",
                        help="which generated trees (small, usr, large, minbase, many)")
    parser.add_argument("--runs", type=int, default=None, help="runs per contender (default 3, quick 1)")
    parser.add_argument("--usr-limit", type=int, default=800, help="MIB of /usr to copy for the usr tree")
    parser.add_argument("--output", default="bench-results", help="folder for results.md/json, ratios.png")
    parser.add_argument("--scratch", default="/var/tmp/osbuild-bench", help="trees and work folders")
    parser.add_argument("--only", metavar="TEXT,...",
                        help="run only the contenders whose name contains one of these texts")
    parser.add_argument("--incremental", action="store_true",
                        help="rebuilds after small changes with the piece cache, instead of the contenders")
    args = parser.parse_args()
    if os.geteuid() != 0:
        log("bench: run as root (the engine runs stages under bubblewrap, trees keep owners)")
        return 1
    runs = args.runs or (1 if args.quick else 3)
    # the engine as installed: with its bytecode (pip compiles it), not
    # compiled again in every run as a checkout without __pycache__ would be
    compileall.compile_dir(os.path.join(REPO, "osbuild"), quiet=1)
    os.makedirs(args.scratch, exist_ok=True)
    if args.tree:
        trees = {os.path.basename(os.path.abspath(args.tree)): os.path.abspath(args.tree)}
    elif args.quick:
        trees = prepare_trees(args.scratch, ["tiny"], 0, True)
    else:
        trees = prepare_trees(args.scratch, args.trees.split(","), args.usr_limit * MIB, False)
    if args.incremental:
        rebuilds = [incremental(name, path, args.scratch, runs) for name, path in trees.items()]
        print(save_results(args.output, "incremental", rebuilds, incremental_markdown(rebuilds)))
        return 0
    items = contenders(shutil.which("umoci") is not None, shutil.which("buildah") is not None)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        items = [c for c in items if any(w in c.name for w in wanted)]
    results: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()} {platform.platform()}",
        "cpus": NPROC,
        "trees": [run_tree(name, path, args.scratch, runs, items) for name, path in trees.items()],
        "engine": engine_overhead(args.scratch, runs),
    }
    text = save_results(args.output, "results", results, markdown(results))
    chart(results, os.path.join(args.output, "ratios.png"))
    print(text)
    log(f"bench: results in {args.output}/ (trees cached in {args.scratch}/trees)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
