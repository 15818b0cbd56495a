"""org.osbuild.oci-archive's piece cache: pieces cut by content, found in
earlier archives, checked, bounded"""

import io
import itertools
import os
import random
import tarfile
import uuid
import zlib

import pytest

import ociarchive.cache
import ociarchive.split
from osbuild.objectstore import link_output
from test.debtree import make_debian_tree
from test.ocitools import Archive

BASE = {"filename": "image.tar", "architecture": "amd64", "source-epoch": 1700000000}


def text(seed, size):
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", str(seed).encode()]
    return b" ".join(rng.choice(words) for _ in range(size // 5))[:size]


def make_tree(root, extra=None):
    """~14 MiB in 400 files over 20 folders; `extra` adds one file early in the tree"""
    for i in range(400):
        folder = os.path.join(root, f"d{i % 20:02d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"f{i:04d}"), "wb") as f:
            f.write(text(i, 20000 + (i * 7919) % 50000))
    if extra:
        with open(os.path.join(root, "d01", extra), "wb") as f:
            f.write(b"a small new file\n")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (1600000000, 1600000000))
    os.utime(root, (1600000000, 1600000000))
    return root


def build(module, tree, outdir, cache=None, keep=True, *, metadata=None, **options):
    """main() as the engine runs it; with `keep`, the output is then linked
    into the cache as the engine does after it committed the output"""
    os.makedirs(outdir, exist_ok=True)
    output_id = uuid.uuid4().hex
    assert module.main(str(outdir), {"tree": {"path": str(tree)}}, dict(BASE, **options), cache=cache,
                       output_id=output_id, metadata=metadata) == 0
    if cache and keep and os.path.isdir(os.path.join(cache, "outputs")):
        assert link_output(cache, output_id, str(outdir))
    with open(os.path.join(outdir, "image.tar"), "rb") as f:
        return f.read()


def cache_files(cache):
    return sorted(os.path.join(d, n) for d, _, names in os.walk(cache) for n in names)


def reused(log):
    line = next(line for line in log.splitlines() if "pieces reused from the cache" in line)
    hits, _, total = line.split("oci-archive: ", 1)[1].split(" pieces")[0].partition(" of ")
    return int(hits), int(total)


@pytest.fixture(name="tree_a")
def fixture_tree_a(tmp_path):
    return make_tree(str(tmp_path / "a"))


def piece_sizes(blob):
    """The uncompressed size of each gzip member of a blob: one per piece"""
    sizes = []
    while blob:
        member = zlib.decompressobj(31)
        sizes.append(len(member.decompress(blob)))
        blob = member.unused_data
    return sizes


def test_cuts_fall_on_entry_boundaries(oci_archive, tmp_path, tree_a):
    archive = Archive(_built(oci_archive, tree_a, tmp_path))
    sizes = piece_sizes(archive.blob(archive.manifest["layers"][0]))
    cuts = list(itertools.accumulate(sizes))[:-1]
    headers, big = set(), []
    with tarfile.open(fileobj=io.BytesIO(archive.layer_tar)) as tar:
        for info in tar:
            headers.add(info.offset)
            if info.size >= ociarchive.split.BIG_ENTRY:
                big.append(info.offset_data)
    assert len(cuts) >= 4, "several pieces"
    assert all(ociarchive.split.PIECE_MIN <= size <= ociarchive.split.CHUNK_SIZE for size in sizes[:-1])
    # at the start of an entry, inside a big file's data at a multiple of
    # PIECE_INNER; only where none of those qualified, at CHUNK_SIZE
    inside = {start + k * ociarchive.split.PIECE_INNER for start in big for k in range(1, 64)}
    assert all(c in headers or c in inside or size == ociarchive.split.CHUNK_SIZE for c, size in zip(cuts, sizes))
    assert sum(c in headers for c in cuts) >= len(cuts) // 2


def test_big_files_are_cut_inside_at_their_own_offsets(oci_archive, tmp_path):
    """Inside a big file every PIECE_INNER bytes from its data's start"""
    inner = ociarchive.split.PIECE_INNER
    root = tmp_path / "big"
    root.mkdir()
    (root / "a-exact").write_bytes(b"exact " * (2 * inner // 6))
    (root / "b-longer").write_bytes(b"longer " * ((2 * inner + 1000) // 7))
    archive = Archive(_built(oci_archive, str(root), tmp_path))
    cuts = set(itertools.accumulate(piece_sizes(archive.blob(archive.manifest["layers"][0]))))
    with tarfile.open(fileobj=io.BytesIO(archive.layer_tar)) as tar:
        exact, longer = tar.getmember("./a-exact"), tar.getmember("./b-longer")
    assert {exact.offset, longer.offset} <= cuts, "before each big entry"
    assert {longer.offset_data + inner, longer.offset_data + 2 * inner} <= cuts
    assert exact.offset_data + inner in cuts
    assert len(cuts) == 6, "the root, a-exact in two, b-longer in three"


def _built(module, tree, tmp_path):
    build(module, tree, tmp_path / "plain")
    return os.path.join(tmp_path / "plain", "image.tar")


def test_cache_changes_nothing_in_the_archive(oci_archive, tmp_path, tree_a, capsys):
    plain = build(oci_archive, tree_a, tmp_path / "plain")
    cache = str(tmp_path / "cache")
    cold = build(oci_archive, tree_a, tmp_path / "cold", cache=cache)
    assert reused(capsys.readouterr().out)[0] == 0
    warm = build(oci_archive, tree_a, tmp_path / "warm", cache=cache)
    hits, total = reused(capsys.readouterr().out)
    assert hits == total >= 4
    assert plain == cold == warm


def test_a_file_added_reuses_the_rest(oci_archive, tmp_path, tree_a, capsys):
    cache = str(tmp_path / "cache")
    build(oci_archive, tree_a, tmp_path / "first", cache=cache)
    capsys.readouterr()
    tree_b = make_tree(str(tmp_path / "b"), extra="f0001a-new")
    warm = build(oci_archive, tree_b, tmp_path / "second", cache=cache)
    hits, total = reused(capsys.readouterr().out)
    assert hits >= total - 2, "pieces resynchronize after the insertion"
    assert warm == build(oci_archive, tree_b, tmp_path / "plain"), "byte for byte a build without cache"


def test_an_unchanged_tree_takes_every_piece_as_it_is(oci_archive, tmp_path, tree_a, capsys):
    cache = str(tmp_path / "cache")
    first = build(oci_archive, tree_a, tmp_path / "first", cache=cache)
    capsys.readouterr()
    seen = []
    again = build(oci_archive, tree_a, tmp_path / "again", cache=cache, metadata=seen.append)
    hits, total = reused(capsys.readouterr().out)
    assert again == first and hits == total
    assert "compressing" not in seen[0]["profile"], "nothing is compressed again"


def test_a_changed_file_of_the_same_size_and_clamped_mtime_is_noticed(oci_archive, tmp_path, tree_a, capsys):
    """Nothing in tar's headers changes (the mtimes after source-epoch are
    clamped to it): only the content says the file is another"""
    cache = str(tmp_path / "cache")
    victim = os.path.join(tree_a, "d10", "f0210")
    os.utime(victim, (1800000000, 1800000000))
    first = build(oci_archive, tree_a, tmp_path / "first", cache=cache)
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        f.write(b"CHANGED!")
    with open(victim, "rb") as f:
        changed = f.read()
    os.utime(victim, (1800000100, 1800000100))
    capsys.readouterr()
    again = build(oci_archive, tree_a, tmp_path / "second", cache=cache)
    hits, total = reused(capsys.readouterr().out)
    assert again != first and hits < total
    assert again == build(oci_archive, tree_a, tmp_path / "plain"), "byte for byte a build without cache"
    archive = Archive(os.path.join(tmp_path / "second", "image.tar"))
    with tarfile.open(fileobj=io.BytesIO(archive.layer_tar)) as tar:
        assert tar.extractfile("./d10/f0210").read() == changed


def test_a_touched_archive_is_checked_and_still_serves(oci_archive, tmp_path, tree_a, capsys):
    cache = str(tmp_path / "cache")
    first = build(oci_archive, tree_a, tmp_path / "first", cache=cache)
    archive = os.path.join(tmp_path / "first", "image.tar")
    os.utime(archive, (1900000000, 1900000000))  # its mtime is not what the index says: each piece's CRC is checked
    capsys.readouterr()
    again = build(oci_archive, tree_a, tmp_path / "again", cache=cache)
    log = capsys.readouterr().out
    hits, total = reused(log)
    assert again == first and hits == total and "damaged" not in log


def test_layered_rebuilds_follow_every_blob(oci_archive, tmp_path, capsys):
    tree = make_debian_tree(str(tmp_path / "tree"))
    cache = str(tmp_path / "cache")
    first = build(oci_archive, tree, tmp_path / "first", cache=cache, layers={})
    capsys.readouterr()
    assert build(oci_archive, tree, tmp_path / "again", cache=cache, layers={}) == first
    hits, total = reused(capsys.readouterr().out)
    assert hits == total
    upgraded = make_debian_tree(str(tmp_path / "upgraded"), versions={"tzdata": "2"})
    changed = build(oci_archive, upgraded, tmp_path / "changed", cache=cache, layers={})
    hits, total = reused(capsys.readouterr().out)
    assert 0 < hits < total
    assert changed == build(oci_archive, upgraded, tmp_path / "plain", layers={}), \
        "byte for byte a build without cache"


def test_the_cache_holds_no_copy_of_the_pieces(oci_archive, tmp_path, tree_a):
    cache = str(tmp_path / "cache")
    build(oci_archive, tree_a, tmp_path / "first", cache=cache)
    archive = os.path.join(tmp_path / "first", "image.tar")
    linked = [p for p in cache_files(cache) if os.path.samefile(p, archive)]
    assert len(linked) == 1, "the archive itself is what the cache reads"
    others = sum(os.path.getsize(p) for p in cache_files(cache) if p not in linked)
    assert others < 64 * 1024, f"besides it, only an index ({others} bytes)"


def test_pieces_of_an_output_the_engine_did_not_keep_are_not_looked_for(oci_archive, tmp_path, tree_a, capsys):
    cache = str(tmp_path / "cache")
    build(oci_archive, tree_a, tmp_path / "first", cache=cache, keep=False)  # e.g. the build failed after
    capsys.readouterr()
    build(oci_archive, tree_a, tmp_path / "second", cache=cache)
    assert reused(capsys.readouterr().out)[0] == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "append-keeps-offsets", "empty"])
def test_changed_archive_is_detected_and_compressed_again(oci_archive, tmp_path, tree_a, capsys, damage):
    cache = str(tmp_path / "cache")
    expected = build(oci_archive, tree_a, tmp_path / "first", cache=cache)
    # the exported file may be the same inode: changed through its name
    victim = os.path.join(tmp_path / "first", "image.tar")
    with open(victim, "r+b") as f:
        if damage == "flip":
            f.seek(len(expected) // 2)
            byte = f.read(1)
            f.seek(len(expected) // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        elif damage == "truncate":
            f.truncate(len(expected) // 2)
        elif damage == "append-keeps-offsets":
            f.seek(0, os.SEEK_END)
            f.write(b"\0" * 4096)
        else:
            f.truncate(0)
    capsys.readouterr()
    again = build(oci_archive, tree_a, tmp_path / "second", cache=cache)
    log = capsys.readouterr().out
    hits, total = reused(log)
    if damage == "append-keeps-offsets":
        assert hits == total, "every piece is still where the index says, checked"
    else:
        assert "1 damaged ones compressed again" in log and hits < total
    assert again == expected, "a changed archive never reaches the image"
    build(oci_archive, tree_a, tmp_path / "third", cache=cache)
    assert reused(capsys.readouterr().out)[0] == total, "the second build's archive serves now"


def test_cache_is_bounded(oci_archive, tmp_path, tree_a):
    cache = str(tmp_path / "cache")
    for i in range(3):
        build(oci_archive, tree_a, tmp_path / f"build{i}", cache=cache)
    pieces = ociarchive.cache.PieceCache(cache, ["libdeflate-gzip", "-c", "-5"])
    outputs = os.listdir(os.path.join(cache, "outputs"))
    size = os.path.getsize(os.path.join(tmp_path / "build0", "image.tar"))
    assert len(outputs) == 3
    assert pieces.trim(int(size * 1.5)) == 2, "the two least recently used outputs go, with their indexes"
    assert len(os.listdir(os.path.join(cache, "outputs"))) == 1
    assert len(os.listdir(os.path.join(cache, "pieces-v3"))) == 1


def index_path(cache):
    (name,) = os.listdir(os.path.join(cache, "pieces-v3"))
    return os.path.join(cache, "pieces-v3", name)


def test_hostile_index_lines_are_ignored(oci_archive, tmp_path, tree_a, capsys):
    cache = str(tmp_path / "cache")
    expected = build(oci_archive, tree_a, tmp_path / "first", cache=cache)
    index = index_path(cache)
    with open(index, "rb") as f:
        lines = f.read().split(b"\n")
    key, prefix = lines[2].split()[0], lines[2].split()[4]
    bad = [b"../../../etc/passwd", b"@ 1 2"] + [
        key + b" -5 10 0 " + prefix, key + b" 0 99999999999 1 " + prefix, b"zz 1 2 3 " + prefix, b"\xff" * 70,
        b"- 1536 10 0 " + prefix, b"- 1546 10 0 " + prefix, b"= " + key + b" 20",  # not where the pieces lie
        b"- 0 10 0 " + prefix, b"= " + key + b" 999",  # not the size of its pieces
    ]
    with open(index, "wb") as f:
        f.write(ociarchive.cache.with_checksum(bad))  # checked lines, each of them wrong
    capsys.readouterr()
    assert build(oci_archive, tree_a, tmp_path / "second", cache=cache) == expected
    assert reused(capsys.readouterr().out)[0] == 0


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_a_damaged_index_is_removed(oci_archive, tmp_path, tree_a, capsys, damage):
    cache = str(tmp_path / "cache")
    expected = build(oci_archive, tree_a, tmp_path / "first", cache=cache)
    index = index_path(cache)
    with open(index, "rb") as f:
        text = f.read()
    with open(index, "wb") as f:
        f.write(text[:len(text) // 2] if damage == "cut" else text.replace(b" 1536 ", b" 1537 ", 1))
    capsys.readouterr()
    assert build(oci_archive, tree_a, tmp_path / "second", cache=cache) == expected
    assert reused(capsys.readouterr().out)[0] == 0
    assert not os.path.exists(index)


def test_unusable_cache_still_builds(oci_archive, tmp_path, tree_a, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    expected = build(oci_archive, tree_a, tmp_path / "plain")
    assert build(oci_archive, tree_a, tmp_path / "bad", cache=str(afile / "cache")) == expected
    assert "no cache of pieces" in capsys.readouterr().out
    missing = tmp_path / "missing" / "deeper"
    assert build(oci_archive, tree_a, tmp_path / "new", cache=str(missing)) == expected


def test_an_index_whose_archive_is_gone_goes_after_a_day(oci_archive, tmp_path, tree_a):
    cache = str(tmp_path / "cache")
    build(oci_archive, tree_a, tmp_path / "first", cache=cache, keep=False)
    index = os.path.join(cache, "pieces-v3", os.listdir(os.path.join(cache, "pieces-v3"))[0])
    ociarchive.cache.PieceCache(cache, ["libdeflate-gzip", "-c", "-5"])
    assert os.path.exists(index), "a build may still be running: its archive is linked when it ends"
    old = os.stat(index).st_mtime - 2 * 24 * 3600
    os.utime(index, (old, old))
    ociarchive.cache.PieceCache(cache, ["libdeflate-gzip", "-c", "-5"])
    assert not os.path.exists(index)
