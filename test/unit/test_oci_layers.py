"""org.osbuild.oci-archive with `layers`: ownership, placement, layer contents, stability"""

import io
import os
import sqlite3
import subprocess
import tarfile

import pytest

import ociarchive.build
import ociarchive.options
import ociarchive.owners
import ociarchive.plan
import ociarchive.split
import ociarchive.tarstream
import ociarchive.util
from osbuild import meta
from test.conftest import REPO
from test.debtree import EPOCH, make_debian_tree, write_package
from test.ocitools import Archive, decompress

BASE = {"filename": "image.tar", "architecture": "amd64", "source-epoch": EPOCH + 100}
APP = {"name": "app", "paths": ["/opt/app"]}


def build(module, tree, outdir, **options):
    os.makedirs(outdir, exist_ok=True)
    opts = dict(BASE, **options)
    assert module.main(str(outdir), {"tree": {"path": str(tree)}}, opts) == 0
    return Archive(os.path.join(outdir, opts["filename"]))


def layer_tars(archive, compression="gzip"):
    """Every layer as a list of TarInfo, in order"""
    out = []
    for desc in archive.manifest["layers"]:
        data = decompress(archive.blob(desc), compression)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            out.append(tar.getmembers())
    return out


def entry_view(info):
    """What an entry means, for comparing the layered image with the single layer"""
    return (info.type, info.mode, info.uid, info.gid, info.size, info.linkname, info.devmajor, info.devminor,
            info.mtime if not info.isdir() else None, tuple(sorted(info.pax_headers.items())))


@pytest.fixture(name="debtree")
def fixture_debtree(tmp_path):
    return make_debian_tree(str(tmp_path / "tree"))


# --- ownership ------------------------------------------------------------------

def test_resolve_in_tree_follows_the_trees_own_links(oci_archive, tmp_path):
    root = tmp_path / "t"
    (root / "usr" / "bin").mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    os.symlink("/usr", root / "abs")  # absolute: the tree's /usr, never the host's
    os.symlink("loop", root / "loop")
    base = os.fsencode(root)
    assert ociarchive.owners.resolve_in_tree(base, b"/bin") == b"usr/bin"
    assert ociarchive.owners.resolve_in_tree(base, b"/abs/bin") == b"usr/bin"
    assert ociarchive.owners.resolve_in_tree(base, b"/../../bin/../bin") == b"usr/bin"
    assert ociarchive.owners.resolve_in_tree(base, b"/missing/x") == b"missing/x"
    assert ociarchive.owners.resolve_in_tree(base, b"/loop/x") is None
    canon = ociarchive.owners.PathCanon(base)
    assert canon(b"/bin/ls") == b"usr/bin/ls"
    assert canon(b"/bin") == b"bin", "the last component is not resolved"
    assert canon(b"/.") is None


def test_dpkg_sources_group_binary_packages_by_source(oci_archive):
    status = (b"Package: libfoo1\nArchitecture: amd64\nSource: foo (1.2-3)\n\n"
              b"Package: foo-tools\nSource: foo\nDescription: x\n more text: with colon\n\n"
              b"Package: coreutils\nArchitecture: amd64\n")
    sources = ociarchive.owners.dpkg_sources(status)
    assert sources[b"libfoo1"] == sources[b"libfoo1:amd64"] == sources[b"foo-tools"] == b"foo"
    assert sources[b"coreutils"] == b"coreutils"


def test_group_sizes_come_from_the_database(oci_archive, tmp_path):
    """What dpkg's Installed-Size (KiB) and rpm's SIZE/LONGSIZE say, summed per source package"""
    status = (b"Package: libfoo1\nArchitecture: amd64\nSource: foo\nInstalled-Size: 10\n\n"
              b"Package: foo-tools\nSource: foo\nInstalled-Size: 3\n\n"
              b"Package: bar\nInstalled-Size: unknown\n")
    sizes = {}
    ociarchive.owners.dpkg_sources(status, sizes)
    assert sizes == {b"libfoo1": 10240, b"libfoo1:amd64": 10240, b"foo-tools": 3072}
    root = make_debian_tree(str(tmp_path / "tree"))
    sizes = {}
    ociarchive.owners.dpkg_owners(os.fsencode(root), ociarchive.owners.PathCanon(os.fsencode(root)), print, sizes)
    assert sizes[b"bigdata"] == 5 * 1024 * 1024
    assert sizes[b"foo"] == 2 * 2048, "libfoo1:amd64 and foo-tools, 2000 bytes each, in KiB"
    header = ociarchive.owners.rpm_header(rpm_blob({1000: (6, b"big"), 1009: (4, [7]), 5009: (5, [2**33])}))
    assert header[1009] == [7] and header[5009] == [2**33]


def rpm_blob(tags):
    """An RPM header blob as rpmdb.sqlite stores it (index count, data length, index, data)"""
    index, data = b"", b""
    for tag, (kind, value) in tags.items():
        if kind == 8:  # string array
            payload, count = b"".join(v + b"\0" for v in value), len(value)
        elif kind == 6:
            payload, count = value + b"\0", 1
        else:  # int64 / int32 / int16 arrays, aligned
            width = {5: 8, 4: 4, 3: 2}[kind]
            data += b"\0" * (-len(data) % width)
            payload, count = b"".join(v.to_bytes(width, "big") for v in value), len(value)
        index += b"".join(x.to_bytes(4, "big") for x in (tag, kind, len(data), count))
        data += payload
    return len(tags).to_bytes(4, "big") + len(data).to_bytes(4, "big") + index + data


def test_rpm_headers_name_files_and_source(oci_archive, tmp_path):
    root = tmp_path / "t"
    (root / "usr" / "lib" / "sysimage" / "rpm").mkdir(parents=True)
    (root / "usr" / "bin").mkdir()
    os.symlink("usr/bin", root / "bin")
    blob = rpm_blob({
        1000: (6, b"coreutils-single"),
        1009: (4, [123456]),
        1030: (3, [0o100755, 0o040755]),
        1044: (6, b"coreutils-9.1-1.fc38.src.rpm"),
        1116: (4, [0, 1]),
        1117: (8, [b"ls", b"doc"]),
        1118: (8, [b"/bin/", b"/usr/share/"]),
    })
    db = sqlite3.connect(root / "usr/lib/sysimage/rpm/rpmdb.sqlite")
    db.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
    db.execute("INSERT INTO Packages (blob) VALUES (?)", (blob,))
    db.commit()
    db.close()
    header = ociarchive.owners.rpm_header(blob)
    assert ociarchive.owners.rpm_source_name(header) == b"coreutils"
    sizes = {}
    canon = ociarchive.owners.PathCanon(os.fsencode(root))
    owners = ociarchive.owners.rpm_owners(os.fsencode(root), canon, print, sizes)
    assert owners == {b"usr/bin/ls": b"coreutils"}, "directories are not owned; /bin resolved"
    assert sizes == {b"coreutils": 123456}


def test_unreadable_database_is_not_an_error(oci_archive, tmp_path, capsys):
    root = tmp_path / "t"
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)  # no status, no info
    (root / "usr" / "lib" / "sysimage" / "rpm").mkdir(parents=True)
    (root / "usr/lib/sysimage/rpm/rpmdb.sqlite").write_bytes(b"not a database" * 100)
    (root / "etc").mkdir()
    (root / "etc" / "x").write_text("x")
    archive = build(oci_archive, root, tmp_path / "out", layers={})
    log = capsys.readouterr().out
    assert "dpkg database unreadable" in log and "rpm database" in log and "unreadable" in log
    assert len(archive.manifest["layers"]) == 1, "no database: one layer"


# --- placement --------------------------------------------------------------------

def groups(oci_archive, sizes):
    out = []
    for name, size in sizes.items():
        group = ociarchive.plan.Group("package", name)
        group.size = size
        out.append(group)
    return out


def placement(layers):
    return {g.name: i for i, layer in enumerate(layers) for g in layer.groups}


def test_placement_of_a_package_depends_on_nothing_else(oci_archive):
    mib = 1024 * 1024
    sizes = {f"pkg{i}": (i % 7) * mib // 3 for i in range(200)}
    sizes.update({"libc": 12 * mib, "perl": 8 * mib, "python3": 20 * mib})
    before = placement(ociarchive.plan.place_groups(groups(oci_archive, sizes), [], 16))
    assert len(set(before.values())) <= 15
    grown = dict(sizes, pkg5=sizes["pkg5"] + mib, newpkg=mib)
    after = placement(ociarchive.plan.place_groups(groups(oci_archive, grown), [], 16))
    moved = [name for name in sizes if before[name] != after[name] and name != "pkg5"]
    # layers are ordered: compare which names share a layer, not its index
    def members(place, name):
        return {n for n, i in place.items() if i == place[name] and n in sizes and n != "pkg5"}
    assert all(members(before, n) == members(after, n) for n in sizes if n != "pkg5"), moved
    own = ociarchive.plan.place_groups(groups(oci_archive, sizes), [], 16)
    assert [g.name for g in own[0].groups] == ["libc"], "large packages have a layer of their own"


def test_placement_respects_max_and_explicit_groups(oci_archive):
    sizes = {f"pkg{i}": 10 * 1024 * 1024 for i in range(40)}
    explicit = [ociarchive.plan.Group("paths", "app")]
    for most in (2, 3, 5, 16, 127):
        layers = ociarchive.plan.place_groups(groups(oci_archive, sizes), explicit, most)
        assert len(layers) + 1 <= most
        assert [g.name for g in layers[-1].groups] == ["app"], "the explicit group, alone, just before the last"


@pytest.mark.parametrize("layers,problem", [
    ({"paths": [{"name": "a", "paths": ["/x"]}, {"name": "b", "paths": ["/x/"]}]}, "already in group 'a'"),
    ({"paths": [{"name": "a", "paths": ["/x"]}, {"name": "a", "paths": ["/y"]}]}, "also the name of paths[0]"),
    ({"max": 2, "paths": [{"name": "a", "paths": ["/x"]}, {"name": "b", "paths": ["/y"]}]}, "max of at least 3"),
])
def test_check_layer_options(oci_archive, layers, problem):
    with pytest.raises(ValueError, match="options.layers") as e:
        ociarchive.options.check_layer_options(layers)
    assert problem in str(e.value)


@pytest.fixture(name="schema", scope="module")
def fixture_schema():
    return meta.ModuleInfo.load(REPO, "Assembler", "org.osbuild.oci-archive").options_schema()


@pytest.mark.parametrize("layers,where,message", [
    ({"max": 1}, ".layers.max", "less than the minimum of 2"),
    ({"max": 128}, ".layers.max", "greater than the maximum of 127"),
    ({"max": "8"}, ".layers.max", "is not of type 'integer'"),
    ({"paths": [{"name": "", "paths": ["/x"]}]}, ".layers.paths[0].name", "non-empty"),
    ({"paths": [{"name": "a", "paths": ["opt"]}]}, ".layers.paths[0].paths[0]", "does not match"),
    ({"paths": [{"name": "a", "paths": ["/opt/../etc"]}]}, ".layers.paths[0].paths[0]", "must not match"),
    ({"paths": [{"name": "a", "paths": ["/x"]}, {"name": "b", "paths": ["/x"]}]}, ".layers.paths[1].paths[0]",
     "also in item 0"),
    ({"paths": [{"name": "a", "paths": ["/x"]}, {"name": "a", "paths": ["/y"]}]}, ".layers.paths[1].name",
     "also in item 0"),
    ({"paths": [{"name": "a"}]}, ".layers.paths[0]", "'paths' is a required property"),
    ({"split": True}, ".layers", "Additional properties"),
])
def test_layer_options_schema_rejects(schema, layers, where, message):
    result = meta.validate(dict(BASE, layers=layers), schema)
    assert any(e.id == where and message in e.message for e in result.errors), [str(e) for e in result.errors]


@pytest.mark.parametrize("layers", [{}, {"max": 2}, {"max": 127, "paths": [APP, {"name": "x y", "paths": ["/"]}]}])
def test_layer_options_schema_accepts(schema, layers):
    assert meta.validate(dict(BASE, layers=layers), schema).valid


# --- the layers themselves ---------------------------------------------------------

def test_layers_hold_their_parents_once_and_the_last_holds_all_directories(oci_archive, debtree, tmp_path):
    archive = build(oci_archive, debtree, tmp_path / "out", layers={"paths": [APP]})
    tars = layer_tars(archive)
    assert len(tars) == len(archive.config["rootfs"]["diff_ids"]) == len(archive.config["history"])
    all_dirs = {info.name for info in tars[-1] if info.isdir()}
    for members in tars:
        names = [info.name for info in members]
        assert len(names) == len(set(names)), "no path twice in one layer"
        assert names == sorted(names, key=lambda n: n.split("/")), "entries sorted as tar --sort=name"
        present = set(names)
        for name in names:
            parent = os.path.dirname(name.rstrip("/"))
            assert parent in present or parent == "", f"{name}: parent {parent} missing"
        for info in members:
            if info.islnk():
                assert info.linkname in present, "a hard link's target is in its layer"
        assert {n for n in names if n in all_dirs or n + "/" in all_dirs} <= all_dirs
    history = [h["created_by"] for h in archive.config["history"]]
    assert history[-1].startswith("osbuild oci-archive: unpackaged")
    app = [i for i, line in enumerate(history) if line == "osbuild oci-archive: paths app"]
    assert len(app) == 1, history
    app_files = {i.name for i in tars[app[0]] if not i.isdir()}
    assert app_files == {"./opt/app/bin/app", "./opt/app/share/data.txt"}, "the explicit group holds nothing else"
    # databases, logs and unowned files are in the last layer
    last = {i.name for i in tars[-1]}
    assert {"./var/lib/dpkg/status", "./var/log/dpkg.log", "./etc/hostname", "./bin"} <= last
    # merged /usr: /bin/ls is listed, ./usr/bin/ls lives in coreutils' layer (with foo's hard link)
    coreutils = next(i for i, line in enumerate(history) if "coreutils" in line)
    names = {i.name for i in tars[coreutils]}
    assert {"./usr/bin/ls", "./usr/bin/cat", "./usr/bin/foo"} <= names
    foo = next(i for i, line in enumerate(history) if line.endswith("foo") or "foo," in line)
    assert "./usr/lib/x86_64-linux-gnu/libfoo.so.1" in {i.name for i in tars[foo]}, "libfoo1:amd64 is source foo"
    bigdata = [i for i, line in enumerate(history) if line == "osbuild oci-archive: packages bigdata"]
    assert len(bigdata) == 1, "a large package has a layer of its own"


def test_repeated_parents_carry_mode_and_owner_but_not_mtime(oci_archive, debtree, tmp_path):
    archive = build(oci_archive, debtree, tmp_path / "out", layers={})
    tars = layer_tars(archive)
    last = {i.name: i for i in tars[-1]}
    for members in tars[:-1]:
        for info in members:
            if info.isdir():
                true = last[info.name]
                assert (info.mode, info.uid, info.gid) == (true.mode, true.uid, true.gid), info.name
                assert info.mtime == BASE["source-epoch"], "a repeated parent's mtime is the epoch"
    doc = last["./usr/share/doc/coreutils"]
    assert doc.mode == 0o750 and doc.mtime == EPOCH


def test_layered_image_is_the_tree(oci_archive, debtree, tmp_path):
    """Applying the layers in order gives exactly what the single layer holds"""
    single = build(oci_archive, debtree, tmp_path / "one")
    layered = build(oci_archive, debtree, tmp_path / "many", layers={"paths": [APP]})
    expected = {i.name: entry_view(i) for i in single.layer_entries().values()}
    merged = {}
    for members in layer_tars(layered):
        for info in members:
            merged[info.name] = entry_view(info)
    assert merged == expected


def merged_view(archive, compression="gzip"):
    """Path -> what it is, after applying the layers in order, and each file's content"""
    merged = {}
    for desc in archive.manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO(decompress(archive.blob(desc), compression)), mode="r:") as tar:
            for info in tar.getmembers():
                data = tar.extractfile(info).read() if info.isreg() else None
                merged[info.name] = (entry_view(info), data)
    return merged


def add_awkward_files(tree):
    """Long names and link names (pax records), a sparse file, a big file, in packages and outside"""
    deep = "/usr/share/doc/coreutils/" + "d" * 90 + "/" + "f" * 120
    write_package(tree, "longnames", files=[deep, "/usr/bin/" + "t" * 150])
    os.symlink("x" * 200, os.path.join(tree, "usr/share/doc/coreutils", "l" * 110))
    os.link(os.path.join(tree, "usr/bin", "t" * 150), os.path.join(tree, "usr/bin", "u" * 150))
    with open(os.path.join(tree, "var/sparse"), "wb") as f:
        f.truncate(6 * 1024 * 1024)
        f.seek(2 * 1024 * 1024)
        f.write(b"middle")
    with open(os.path.join(tree, "opt/app/big"), "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024 + 100))


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layered_image_holds_every_byte(oci_archive, debtree, tmp_path, compression):
    """Names that need pax records, sparse and big files, hard links: the
    layers together are the single layer, content included, in every compression"""
    add_awkward_files(debtree)
    single = build(oci_archive, debtree, tmp_path / "one", compression=compression)
    layered = build(oci_archive, debtree, tmp_path / "many", compression=compression, layers={"paths": [APP]})
    assert len(layered.manifest["layers"]) > 3
    assert merged_view(layered, compression) == merged_view(single, compression)
    tars = layer_tars(layered, compression)
    history = [h["created_by"] for h in layered.config["history"]]
    longnames = next(i for i, line in enumerate(history) if "longnames" in line)
    names = {info.name for info in tars[longnames]}
    assert "./usr/bin/" + "t" * 150 in names and "./usr/bin/" + "u" * 150 in names, "the link follows its target"
    app = history.index("osbuild oci-archive: paths app")
    assert "./opt/app/big" in {info.name for info in tars[app]}


def test_the_deepest_explicit_path_decides(oci_archive, debtree, tmp_path):
    """A path group inside another one, and one inside the package state, win there"""
    groups = [APP, {"name": "data", "paths": ["/opt/app/share/data.txt"]},
              {"name": "log", "paths": ["/var/log/dpkg.log"]}]
    archive = build(oci_archive, debtree, tmp_path / "out", layers={"paths": groups})
    tars = layer_tars(archive)
    history = [h["created_by"] for h in archive.config["history"]]
    files = {line.rpartition(" ")[2]: {i.name for i in tars[k] if not i.isdir()}
             for k, line in enumerate(history) if line.startswith("osbuild oci-archive: paths ")}
    assert files == {"app": {"./opt/app/bin/app"}, "data": {"./opt/app/share/data.txt"},
                     "log": {"./var/log/dpkg.log"}}
    assert "./var/log/dpkg.log" not in {i.name for i in tars[-1]}


def test_many_layers_gather_pieces_on_disk_and_cut_them_alike(oci_archive, debtree, tmp_path, monkeypatch):
    """Beyond MEMORY_LAYERS open pieces are files on disk; where pieces end never
    depends on the other layers, so the blobs are the same bytes"""
    add_awkward_files(debtree)
    in_memory = build(oci_archive, debtree, tmp_path / "a", layers={"max": 127})
    on_disk = []
    real = ociarchive.util.unnamed_file
    monkeypatch.setattr(ociarchive.split, "unnamed_file",
                        lambda directory: on_disk.append(directory) or real(directory))
    monkeypatch.setattr(ociarchive.split, "MEMORY_LAYERS", 2)
    disk = build(oci_archive, debtree, tmp_path / "b", layers={"max": 127})
    assert len(on_disk) > 1 + len(disk.manifest["layers"]), "pieces were gathered in files beside the archive"
    assert os.listdir(tmp_path / "b") == ["image.tar"], "and none of them is left"
    with open(in_memory.path, "rb") as a, open(disk.path, "rb") as b:
        assert a.read() == b.read()


def test_a_repeated_parent_keeps_all_but_its_mtime(oci_archive):
    """Its pax mtime record goes (another package's install moves it), xattrs stay; valid headers"""
    info = tarfile.TarInfo("./usr/bin/")
    info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o750, 7, 8, 1234567
    info.pax_headers = {"mtime": "1234567.25", "SCHILY.xattr.user.note": "kept"}
    raw = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    repeated = ociarchive.tarstream.repeated_header(raw, 42)
    with tarfile.open(fileobj=io.BytesIO(repeated + bytes(1024)), mode="r:") as tar:
        (entry,) = tar.getmembers()
    assert (entry.name, entry.mode, entry.uid, entry.gid, entry.mtime) == ("./usr/bin", 0o750, 7, 8, 42)
    assert entry.pax_headers == {"SCHILY.xattr.user.note": "kept"}
    only_mtime = tarfile.TarInfo("./etc/")
    only_mtime.type, only_mtime.pax_headers = tarfile.DIRTYPE, {"mtime": "5.5"}
    plain = ociarchive.tarstream.repeated_header(only_mtime.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), 42)
    assert len(plain) == tarfile.BLOCKSIZE, "no pax header left with nothing in it"


@pytest.mark.parametrize("case", [
    ("head -c 5000 /dev/zero; exit 3", "sh exited with status 3"),
    ("true", "tar's stream ends without its end-of-archive blocks"),
    ("printf 'x%.0s' $(seq 2000)", "no tar header at byte 0 of tar's stream"),
])
@pytest.mark.parametrize("layered", [True, False])
def test_a_failing_build_leaves_nothing(oci_archive, debtree, tmp_path, monkeypatch, case, layered):  # noqa: PLR0917
    """tar failing, ending early, or writing what is not tar: layered and not"""
    script, problem = case
    layers = {} if layered else None
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(ociarchive.build, "layer_tar_argv", lambda tree, epoch: ["sh", "-c", script])
    options = dict(BASE) if layers is None else dict(BASE, layers=layers)
    with pytest.raises(RuntimeError, match=problem):
        oci_archive.main(str(out), {"tree": {"path": debtree}}, options)
    assert os.listdir(out) == [], "neither the archive nor the spill file is left"


def test_layered_archive_is_reproducible(oci_archive, debtree, tmp_path):
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-a", debtree, copy], check=True)  # devices, hard links, owners, times
    one = build(oci_archive, debtree, tmp_path / "a", layers={"paths": [APP]})
    two = build(oci_archive, copy, tmp_path / "b", layers={"paths": [APP]})
    with open(one.path, "rb") as a, open(two.path, "rb") as b:
        assert a.read() == b.read()


def changed_blobs(before, after):
    old = {d["digest"] for d in before.manifest["layers"]}
    return [d["digest"] for d in after.manifest["layers"] if d["digest"] not in old]


@pytest.mark.parametrize("package", ["coreutils", "tzdata", "bigdata"])
def test_one_package_changed_changes_two_blobs(oci_archive, tmp_path, package):
    before = build(oci_archive, make_debian_tree(str(tmp_path / "t1")), tmp_path / "a", layers={"paths": [APP]})
    tree = make_debian_tree(str(tmp_path / "t2"), versions={package: "2"})
    after = build(oci_archive, tree, tmp_path / "b", layers={"paths": [APP]})
    assert len(after.manifest["layers"]) == len(before.manifest["layers"])
    assert len(changed_blobs(before, after)) == 2


def test_one_package_added_changes_two_blobs(oci_archive, tmp_path):
    before = build(oci_archive, make_debian_tree(str(tmp_path / "t1")), tmp_path / "a", layers={})
    tree = make_debian_tree(str(tmp_path / "t2"))
    write_package(tree, "newpkg", "1", files=["/usr/bin/newtool", "/usr/share/doc/newpkg/README"])
    after = build(oci_archive, tree, tmp_path / "b", layers={})
    assert 1 <= len(changed_blobs(before, after)) <= 2


def test_app_change_changes_only_its_layer(oci_archive, tmp_path):
    before = build(oci_archive, make_debian_tree(str(tmp_path / "t1")), tmp_path / "a", layers={"paths": [APP]})
    after = build(oci_archive, make_debian_tree(str(tmp_path / "t2"), versions={"app": "2"}), tmp_path / "b",
                  layers={"paths": [APP]})
    assert len(changed_blobs(before, after)) == 1, "the app's layer; nothing else moved"


def test_without_layers_one_layer(oci_archive, debtree, tmp_path):
    archive = build(oci_archive, debtree, tmp_path / "out")
    assert len(archive.manifest["layers"]) == 1
    assert archive.config["history"] == [{"created": archive.config["created"],
                                          "created_by": "osbuild org.osbuild.oci-archive"}]


def test_rpmdb_with_pending_write_ahead_log_is_read_whole(oci_archive, tmp_path):
    root = tmp_path / "t"
    (root / "var" / "lib" / "rpm").mkdir(parents=True)
    path = root / "var/lib/rpm/rpmdb.sqlite"
    writer = sqlite3.connect(path)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
        writer.commit()
        writer.execute("PRAGMA wal_autocheckpoint=0")
        blob = rpm_blob({1000: (6, b"late"), 1116: (4, [0]), 1117: (8, [b"tool"]), 1118: (8, [b"/usr/bin/"])})
        writer.execute("INSERT INTO Packages (blob) VALUES (?)", (blob,))
        writer.commit()
        assert os.path.getsize(str(path) + "-wal") > 0, "the insert is still only in the log"
        before = sorted(os.listdir(root / "var/lib/rpm"))
        assert ociarchive.owners.read_rpmdb(os.fsencode(path)) == [blob]
        assert sorted(os.listdir(root / "var/lib/rpm")) == before, "nothing written into the tree"
    finally:
        writer.close()
