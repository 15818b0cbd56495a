"""org.osbuild.oci-archive without a sandbox: options, documents, the archive"""

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading

import pytest

import ociarchive.archive
import ociarchive.build
import ociarchive.cache
import ociarchive.compress
import ociarchive.deflate
import ociarchive.layout
import ociarchive.options
import ociarchive.pieces
import ociarchive.split
import ociarchive.tarstream
from osbuild import meta
from test.conftest import REPO
from test.ocitools import Archive, sha256

ARCH = {"filename": "image.tar", "architecture": "amd64"}


@pytest.fixture(name="schema", scope="module")
def fixture_schema():
    info = meta.ModuleInfo.load(REPO, "Assembler", "org.osbuild.oci-archive")
    return info.options_schema()


def make_tree(root):
    os.makedirs(os.path.join(root, "usr", "bin"))
    os.makedirs(os.path.join(root, "etc"))
    with open(os.path.join(root, "usr", "bin", "tool"), "wb") as f:
        f.write(b"#!/bin/sh\necho hi\n" * 100)
    os.chmod(os.path.join(root, "usr", "bin", "tool"), 0o4755)
    with open(os.path.join(root, "etc", "config"), "w", encoding="utf-8") as f:
        f.write("key=value\n")
    os.chmod(os.path.join(root, "etc", "config"), 0o600)
    os.symlink("usr/bin", os.path.join(root, "bin"))
    os.link(os.path.join(root, "etc", "config"), os.path.join(root, "etc", "config.hardlink"))
    os.mkfifo(os.path.join(root, "etc", "fifo"))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (1600000000, 1600000000), follow_symlinks=False)
    os.utime(root, (1600000000, 1600000000))
    return root


@pytest.fixture(name="tree")
def fixture_tree(tmp_path):
    return make_tree(str(tmp_path / "tree"))


def build(module, tree, outdir, **options):
    os.makedirs(outdir, exist_ok=True)
    opts = dict(ARCH, **options)
    assert module.main(str(outdir), {"tree": {"path": str(tree)}}, opts) == 0
    return Archive(os.path.join(outdir, opts["filename"]))


# --- pure functions -------------------------------------------------------------

@pytest.mark.parametrize("name", ["image.tar", "a", "x" * 255, "my image.oci", ".hidden", "ünï.tar"])
def test_safe_filename_accepts(oci_archive, name):
    assert ociarchive.options.safe_filename(name) == name


@pytest.mark.parametrize("name,problem", [
    ("", "empty"),
    (".", "empty, '.'"),
    ("..", "'..'"),
    ("../x", "'/'"),
    ("a/b", "'/'"),
    ("/etc/passwd", "'/'"),
    ("a\0b", "NUL"),
    ("x" * 256, "255 bytes"),
    ("ü" * 128, "255 bytes"),
])
def test_safe_filename_rejects(oci_archive, name, problem):
    with pytest.raises(ValueError, match="options.filename") as e:
        ociarchive.options.safe_filename(name)
    assert problem in str(e.value)


@pytest.mark.parametrize("name,variant,expected", [
    ("amd64", None, ("amd64", None)),
    ("x86_64", None, ("amd64", None)),
    ("aarch64", None, ("arm64", "v8")),
    ("arm64", None, ("arm64", "v8")),
    ("armv7hl", None, ("arm", "v7")),
    ("armhfp", None, ("arm", "v7")),
    ("armv6l", None, ("arm", "v6")),
    ("arm", "v6", ("arm", "v6")),
    ("i686", None, ("386", None)),
    ("386", None, ("386", None)),
    ("ppc64le", None, ("ppc64le", None)),
    ("s390x", None, ("s390x", None)),
    ("riscv64", None, ("riscv64", None)),
])
def test_platform_normalizes(oci_archive, name, variant, expected):
    assert ociarchive.options.platform(name, variant) == expected


def test_platform_rejects_unknown_with_list(oci_archive):
    with pytest.raises(ValueError, match="unknown, use one of .*aarch64.*amd64"):
        ociarchive.options.platform("sparc")
    with pytest.raises(ValueError, match="not a variant of amd64"):
        ociarchive.options.platform("amd64", "v7")


def test_schema_architecture_enum_matches_table(oci_archive, schema):
    assert sorted(schema["properties"]["architecture"]["enum"]) == sorted(ociarchive.options.ARCHITECTURES)


def test_config_defaults_match_schema(oci_archive, schema):
    props = schema["properties"]["config"]["properties"]
    config = ociarchive.options.config_from_options({})
    assert config == {"Cmd": props["Cmd"]["default"], "Env": props["Env"]["default"]}
    assert schema["properties"]["compression"]["default"] == ociarchive.options.DEFAULT_COMPRESSION


def test_config_from_options_full(oci_archive):
    config = ociarchive.options.config_from_options({
        "Cmd": ["-c", "true"], "Entrypoint": ["/bin/sh"], "Env": ["A=1"], "User": "1000:1000",
        "ExposedPorts": ["80", "53/udp", "8080/tcp"], "Volumes": ["/data", "/var/log"],
        "Labels": {"a": "b"}, "StopSignal": "SIGINT", "WorkingDir": "/srv",
    })
    assert config == {
        "Cmd": ["-c", "true"], "Entrypoint": ["/bin/sh"], "Env": ["A=1"], "User": "1000:1000",
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}, "8080/tcp": {}},
        "Volumes": {"/data": {}, "/var/log": {}},
        "Labels": {"a": "b"}, "StopSignal": "SIGINT", "WorkingDir": "/srv",
    }


def test_config_accepts_2021_stop_signal_misspelling(oci_archive):
    assert ociarchive.options.config_from_options({"StopSiganl": "SIGKILL"})["StopSignal"] == "SIGKILL"
    assert ociarchive.options.config_from_options({"StopSignal": "SIGINT"})["StopSignal"] == "SIGINT"
    with pytest.raises(ValueError, match="disagree"):
        ociarchive.options.config_from_options({"StopSignal": "SIGINT", "StopSiganl": "SIGKILL"})


@pytest.mark.parametrize("ports", [["http"], ["0"], ["70000"], ["80/icmp"]])
def test_config_rejects_bad_ports(oci_archive, ports):
    with pytest.raises(ValueError, match="ExposedPorts"):
        ociarchive.options.config_from_options({"ExposedPorts": ports})


def test_config_rejects_relative_volume(oci_archive):
    with pytest.raises(ValueError, match="Volumes 'data': must be an absolute path"):
        ociarchive.options.config_from_options({"Volumes": ["data"]})


def test_layer_tar_argv_is_reproducible_and_filters_xattrs(oci_archive):
    argv = ociarchive.tarstream.layer_tar_argv("/tree", 42)
    assert argv[0] == "tar" and argv[-1] == "."
    for flag in ["--format=posix", "--sort=name", "--numeric-owner", "--mtime=@42", "--clamp-mtime",
                 "--xattrs-include=security.capability", "--no-selinux"]:
        assert flag in argv
    assert "delete=atime,delete=ctime" in " ".join(argv)
    assert not any(a.startswith("--mtime") for a in ociarchive.tarstream.layer_tar_argv("/tree", None))


def test_compressor_choice(oci_archive):
    def have(*names):
        return lambda name: name in names

    chosen = ociarchive.compress.compressor("gzip", None, have("libdeflate-gzip", "pigz", "gzip"))
    assert (chosen.argv, chosen.chunked) == (["libdeflate-gzip", "-c", "-5"], True)
    assert ociarchive.compress.compressor("gzip", 9, have("libdeflate-gzip")).argv[-1] == "-9"
    chosen = ociarchive.compress.compressor("gzip", 4, have("pigz", "gzip"))
    assert (chosen.argv, chosen.chunked) == (["pigz", "--no-name", "--stdout", "-4"], False)
    assert ociarchive.compress.compressor("gzip", 1, have("gzip")).argv == ["gzip", "--no-name", "--stdout", "-1"]
    assert ociarchive.compress.compressor("zstd", None, have("zstd")).argv[:1] == ["zstd"]
    assert ociarchive.compress.compressor("none", None, have()) is None
    with pytest.raises(RuntimeError, match="zstd program is not in the build root"):
        ociarchive.compress.compressor("zstd", None, have())
    with pytest.raises(RuntimeError, match="none of libdeflate-gzip, pigz or gzip"):
        ociarchive.compress.compressor("gzip", None, have())
    with pytest.raises(ValueError, match="gzip takes 1-9"):
        ociarchive.compress.compressor("gzip", 12, have("pigz"))


@pytest.mark.parametrize("program", ["libdeflate-gzip", "pigz", "gzip"])
def test_every_gzip_compressor_gives_a_valid_layer(oci_archive, spec, tmp_path, monkeypatch, program):
    if not shutil.which(program):
        pytest.fail(f"{program} is not installed (tools/setup installs it)")
    tree = make_tree(str(tmp_path / "tree"))
    with open(os.path.join(tree, "big"), "wb") as f:  # several chunks, the last one partial
        for i in range(3 * ociarchive.split.CHUNK_SIZE // 4096 + 7):
            f.write(os.urandom(2048) + bytes([i % 256]) * 2048)
    real_which = shutil.which
    monkeypatch.setattr(ociarchive.compress.shutil, "which", lambda name: real_which(name) if name == program else None)
    archive = build(oci_archive, tree, tmp_path / "out")
    assert archive.config["rootfs"]["diff_ids"] == [sha256(archive.layer_tar)]
    spec.validate("manifest", archive.manifest)
    assert "./big" in archive.layer_entries()


def deflate_inputs():
    text = b"".join(b"line %d of a text that repeats itself, more or less\n" % i for i in range(60000))
    noise = os.urandom(200 * 1024)
    return [b"", b"a", text, noise, text[:500000] + noise + text[:12345]]


@pytest.mark.parametrize("level", [1, 5, 9])
def test_libdeflate_in_process_makes_the_programs_bytes(oci_archive, tmp_path, level):
    """The library called in the assembler's process gives every piece the
    bytes `libdeflate-gzip -c -N` gives it, from bytes, a bytearray or a
    piece's file"""
    argv = ["libdeflate-gzip", "-c", f"-{level}"]
    deflater = ociarchive.deflate.for_argv(argv)
    assert deflater is not None, "libdeflate.so.0 does not load (tools/setup installs libdeflate0)"
    try:
        for data in deflate_inputs():
            program = subprocess.run(argv, input=data, capture_output=True, check=True).stdout
            assert bytes(deflater.compress(data)) == program
            assert bytes(deflater.compress(bytearray(data))) == program
            fd = os.memfd_create("piece")
            try:
                os.write(fd, data)
                with ociarchive.pieces.piece_buffer(fd, len(data)) as view:
                    assert bytes(deflater.compress(view)) == program
            finally:
                os.close(fd)
            assert gzip.decompress(program) == data
    finally:
        deflater.close()


def test_libdeflate_in_process_only_for_its_command_line(oci_archive):
    for argv in (["pigz", "--no-name", "--stdout", "-6"], ["sh", "-c", "cat"], ["libdeflate-gzip", "-c", "-x"],
                 ["libdeflate-gzip", "-6"], ["zstd", "--quiet", "--stdout", "-T0", "-3", "--no-check"]):
        assert ociarchive.deflate.for_argv(argv) is None, argv
    assert ociarchive.deflate.level_of(["libdeflate-gzip", "-c", "-12"]) == 12


def test_layers_without_the_library_are_the_same_bytes(oci_archive, tmp_path, monkeypatch):
    """Where libdeflate.so.0 cannot be loaded the program compresses each
    piece: the archive is byte for byte the same"""
    tree = make_tree(str(tmp_path / "tree"))
    with open(os.path.join(tree, "big"), "wb") as f:  # several pieces, one of them incompressible
        f.write(b"".join(b"row %d\n" % i for i in range(900000)) + os.urandom(5 * 1024 * 1024))
    calls = []
    compress = ociarchive.deflate.Deflate.compress
    monkeypatch.setattr(ociarchive.deflate.Deflate, "compress",
                        lambda self, data: calls.append(1) or compress(self, data))
    with_library = build(oci_archive, tree, tmp_path / "library", **{"source-epoch": 1})
    assert len(calls) >= 2, "the pieces were not compressed in the process"
    made_here = len(calls)
    monkeypatch.setattr(ociarchive.deflate, "library", lambda: None)  # as where the library is missing
    with_program = build(oci_archive, tree, tmp_path / "program", **{"source-epoch": 1})
    assert len(calls) == made_here, "without the library, the program compresses"
    with open(with_library.path, "rb") as a, open(with_program.path, "rb") as b:
        assert a.read() == b.read()


# writes a file to stdout `piece` bytes per write
DRIP = "import os, sys\nwith open(sys.argv[1], 'rb') as f:\n    while chunk := f.read(int(sys.argv[2])):\n" \
       "        os.write(1, chunk)\n"


def tar_of(data):
    """A pax tar stream holding one file with `data`"""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("./data")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def chunked(oci_archive, stream, workers, piece, path):
    """The gzip blob of the tar `stream` arriving `piece` bytes at a time, compressed by `workers`"""
    source = f"{path}.in"
    with open(source, "wb") as f:
        f.write(stream)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    blob = ociarchive.archive.BlobWriter(fd)
    argv = [sys.executable, "-c", DRIP, source, str(piece)]
    try:
        (result,) = ociarchive.split.SplitLayers(argv, ["libdeflate-gzip", "-c", "-6"], blob, workers).run(0)
    finally:
        blob.close()
        os.close(fd)
    with open(path, "rb") as f:
        archive = f.read()
    assert result["raw_size"] == len(stream) and result["diff_id"] == sha256(stream)
    output = archive[ociarchive.archive.RESERVED:ociarchive.archive.RESERVED + result["size"]]
    assert result["digest"] == sha256(output)
    return output


def test_incompressible_detection(oci_archive):
    size = ociarchive.split.CHUNK_SIZE
    random = os.urandom(size)
    text = (b"the quick brown fox jumps over the lazy dog " * (size // 44 + 1))[:size]
    half = b"".join(random[i:i + 512 * 1024] + text[i:i + 512 * 1024] for i in range(0, size // 2, 512 * 1024))
    assert ociarchive.compress.incompressible(random)
    assert not ociarchive.compress.incompressible(text)
    assert not ociarchive.compress.incompressible(half), "half text must be compressed"
    assert not ociarchive.compress.incompressible(random[:1000]), "too small to judge"


def test_incompressible_pieces_are_stored(oci_archive, tmp_path):
    if not shutil.which("libdeflate-gzip"):
        pytest.fail("libdeflate-gzip is not installed (tools/setup installs it)")
    size = ociarchive.split.CHUNK_SIZE
    stream = tar_of(os.urandom(size) + b"compress me " * (size // 12) + os.urandom(1000))
    output = chunked(oci_archive, stream, 2, 65536, tmp_path / "out")
    assert gzip.decompress(output) == stream
    assert len(output) < size + size // 4  # the text piece was compressed
    assert len(output) > size  # the random piece was stored, not lost


def test_chunked_output_does_not_depend_on_workers(oci_archive, tmp_path):
    if not shutil.which("libdeflate-gzip"):
        pytest.fail("libdeflate-gzip is not installed (tools/setup installs it)")
    stream = tar_of(b"".join(os.urandom(1000) + b"x" * 3000 for _ in range(2500)))
    one = chunked(oci_archive, stream, 1, 1 << 20, tmp_path / "one")
    three = chunked(oci_archive, stream, 3, 12345, tmp_path / "three")
    assert one == three
    assert gzip.decompress(one) == stream


@pytest.mark.parametrize("size", [0, 1, 2**33 - 1, 2**33, 2**40])
def test_layer_prefix_fills_reserved_space(oci_archive, size):
    name = "blobs/sha256/" + "a" * 64
    prefix = ociarchive.archive.layer_prefix(name, size, 0)
    assert len(prefix) == ociarchive.archive.RESERVED
    blocks = [prefix[i:i + 512] for i in range(0, len(prefix), 512)]
    last = tarfile.TarInfo.frombuf(blocks[-1], "utf-8", "strict")
    assert last.name == name
    if size < 2**33:
        headers = [tarfile.TarInfo.frombuf(b, "utf-8", "strict") for b in blocks]
        assert [h.name for h in headers] == ["blobs", "blobs/sha256", name]
        assert headers[-1].size == size
    else:
        assert blocks[0][156:157] == tarfile.XHDTYPE  # a pax header carries the size
        assert f"size={size}".encode() in blocks[1]


# --- the schema ---------------------------------------------------------------

OPTIONS_2021 = [
    {"filename": "a.tar", "architecture": "amd64"},
    {"filename": "a.tar", "architecture": "arm64", "config": {}},
    {"filename": "a.tar", "architecture": "x86_64", "config": {
        "Cmd": ["/bin/sh"], "Env": ["A=b"], "ExposedPorts": ["80"], "User": "root",
        "Labels": {"x": "y"}, "StopSiganl": "SIGTERM", "Volumes": ["/data"], "WorkingDir": "/"}},
    {"filename": "container.tar", "architecture": "aarch64", "config": {"Cmd": []}},
    {"filename": "c.tar", "architecture": "amd64", "config": {"Env": ["NAME_ONLY"], "ExposedPorts": [], "Labels": {}}},
]


@pytest.mark.parametrize("options", OPTIONS_2021)
def test_2021_options_still_validate(schema, options):
    assert meta.validate(options, schema).valid


@pytest.mark.parametrize("options,message", [
    ({"architecture": "amd64"}, "'filename' is a required property"),
    ({"filename": "a.tar"}, "'architecture' is a required property"),
    (dict(ARCH, filename="../x"), "does not match"),
    (dict(ARCH, filename=".."), "should not be valid"),
    (dict(ARCH, filename=""), "should be non-empty"),
    (dict(ARCH, architecture="sparc"), "'sparc' is not one of"),
    (dict(ARCH, compression="EXTREME"), "'EXTREME' is not one of"),
    (dict(ARCH, config={"Labels": {"n": 1}}), "1 is not of type 'string'"),
    (dict(ARCH, config={"Labels": {"n": {"a": "b"}}}), "is not of type 'string'"),
    (dict(ARCH, config={"Cmd": "sh"}), "'sh' is not of type 'array'"),
    (dict(ARCH, config={"Unknown": 1}), "Additional properties are not allowed"),
    (dict(ARCH, tag="Bad Tag!"), "does not match"),
    (dict(ARCH, annotations={"a": 1}), "1 is not of type 'string'"),
    (dict(ARCH, **{"source-epoch": -1}), "less than the minimum"),
    (dict(ARCH, **{"source-epoch": "now"}), "'now' is not of type 'integer'"),
    (dict(ARCH, variant="v9"), "'v9' is not one of"),
    (dict(ARCH, extra=True), "Additional properties are not allowed"),
])
def test_bad_options_give_one_clear_error(schema, options, message):
    result = meta.validate(options, schema)
    assert len(result.errors) == 1, result.errors
    assert message in result.errors[0].message


# --- building archives ------------------------------------------------------------

@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_archive_is_valid_oci(oci_archive, spec, tree, tmp_path, compression):
    archive = build(oci_archive, tree, tmp_path / "out", compression=compression, tag="v1",
                    annotations={"org.example": "yes"})
    spec.validate("layout", archive.layout)
    spec.validate("index", archive.index)
    spec.validate("manifest", archive.manifest)
    spec.validate("config", archive.config)
    assert archive.layout == {"imageLayoutVersion": "1.0.0"}
    assert archive.index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert archive.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert archive.manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    expected_type = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
                     "none": "application/vnd.oci.image.layer.v1.tar"}[compression]
    assert archive.manifest["layers"][0]["mediaType"] == expected_type
    assert archive.config["rootfs"] == {"type": "layers", "diff_ids": [sha256(archive.layer_tar)]}
    assert archive.config["os"] == "linux" and archive.config["architecture"] == "amd64"
    assert archive.config["history"][0]["created"] == archive.config["created"]
    entry = archive.index["manifests"][0]
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "v1", "org.example": "yes"}
    assert archive.manifest["annotations"] == {"org.example": "yes"}
    # every blob in the archive is referenced: nothing stray
    blobs = {n for n in archive.members if n.startswith("blobs/")}
    referenced = {"blobs/sha256/" + d["digest"].split(":")[1]
                  for d in [entry, archive.manifest["config"], *archive.manifest["layers"]]}
    assert blobs == referenced
    assert not [n for n in os.listdir(tmp_path / "out") if n != "image.tar"], "temporary files left"


def test_layer_keeps_metadata(oci_archive, tree, tmp_path):
    archive = build(oci_archive, tree, tmp_path / "out")
    entries = archive.layer_entries()
    assert "./" in entries or "." in entries
    assert all(not name.startswith("/") for name in entries)
    assert list(entries) == sorted(entries, key=lambda n: n.rstrip("/"))
    tool = entries["./usr/bin/tool"]
    assert stat.S_IMODE(tool.mode) == 0o4755
    assert entries["./etc/config"].mode == 0o600
    assert entries["./bin"].issym() and entries["./bin"].linkname == "usr/bin"
    assert entries["./etc/config.hardlink"].islnk()
    assert entries["./etc/config.hardlink"].linkname == "./etc/config"
    assert entries["./etc/fifo"].isfifo()
    assert tool.uid == os.getuid() and tool.uname == ""
    assert "atime" not in tool.pax_headers and "ctime" not in tool.pax_headers


def test_source_epoch_sets_created_and_clamps_mtimes(oci_archive, tree, tmp_path):
    future = os.path.join(tree, "etc", "new")
    with open(future, "w", encoding="utf-8") as f:
        f.write("x")
    os.utime(future, (2000000000, 2000000000))
    archive = build(oci_archive, tree, tmp_path / "out", **{"source-epoch": 1700000000})
    assert archive.config["created"] == "2023-11-14T22:13:20Z"
    entries = archive.layer_entries()
    assert entries["./etc/new"].mtime == 1700000000
    assert entries["./etc/config"].mtime == 1600000000  # older ones are kept
    assert {info.mtime for info in archive.infos.values()} == {1700000000}
    assert {(info.uid, info.gid) for info in archive.infos.values()} == {(0, 0)}


def test_reproducible_bytes_across_copies(oci_archive, tree, tmp_path):
    # a sparse file too: GNU tar's default sparse format names the entry
    # after tar's process id
    sparse = os.path.join(tree, "etc", "sparse")
    with open(sparse, "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(3 * 1024 * 1024)
        f.write(b"middle")
    os.utime(sparse, (1600000000, 1600000000))
    assert os.stat(sparse).st_blocks * 512 < 1024 * 1024, "the file system keeps the hole"
    options = {"source-epoch": 1700000000, "tag": "latest"}
    first = build(oci_archive, tree, tmp_path / "one", **options)
    copy = str(tmp_path / "copy")
    subprocess.run(["cp", "-a", tree, copy], check=True)
    second = build(oci_archive, copy, tmp_path / "two", **options)
    with open(first.path, "rb") as a, open(second.path, "rb") as b:
        assert a.read() == b.read()
    layer = gzip.decompress(first.blob(first.manifest["layers"][0]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert tar.getmember("./etc/sparse").size == 8 * 1024 * 1024
        with open(sparse, "rb") as f:
            assert tar.extractfile("./etc/sparse").read() == f.read()


def test_without_epoch_created_is_now(oci_archive, tree, tmp_path):
    archive = build(oci_archive, tree, tmp_path / "out")
    assert archive.config["created"][:4] >= "2024"


def test_empty_tree_gives_valid_image(oci_archive, spec, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    archive = build(oci_archive, empty, tmp_path / "out")
    spec.validate("manifest", archive.manifest)
    assert list(archive.layer_entries()) in (["./"], ["."])


def test_arm_variant_in_config(oci_archive, tree, tmp_path, spec):
    archive = build(oci_archive, tree, tmp_path / "out", architecture="armv7hl")
    assert (archive.config["architecture"], archive.config["variant"]) == ("arm", "v7")
    spec.validate("config", archive.config)


def test_failure_leaves_nothing(oci_archive, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError, match="create layer: tar exited"):
        oci_archive.main(str(out), {"tree": {"path": str(tmp_path / "missing")}}, dict(ARCH))
    assert os.listdir(out) == []


def test_missing_compressor_is_named_and_leaves_nothing(oci_archive, tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real_which = shutil.which
    monkeypatch.setattr(ociarchive.compress.shutil, "which", lambda name: None if name == "zstd" else real_which(name))
    with pytest.raises(RuntimeError, match="zstd"):
        oci_archive.main(str(out), {"tree": {"path": tree}}, dict(ARCH, compression="zstd"))
    assert os.listdir(out) == []


def test_dying_compressor_fails_the_build(oci_archive, tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(ociarchive.build, "compressor",
                        lambda *a: ociarchive.compress.Compressor(["sh", "-c", "head -c 10 >/dev/null; exit 3"]))
    big = os.path.join(tree, "big")
    with open(big, "wb") as f:
        f.write(os.urandom(4 * 1024 * 1024))
    with pytest.raises((RuntimeError, BrokenPipeError)):
        oci_archive.main(str(out), {"tree": {"path": tree}}, dict(ARCH))
    assert os.listdir(out) == []


def test_dying_chunked_compressor_fails_the_build(oci_archive, tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(ociarchive.build, "compressor",
                        lambda *a: ociarchive.compress.Compressor(["sh", "-c", "cat >/dev/null; exit 4"], chunked=True))
    with pytest.raises(RuntimeError, match="sh exited with status 4"):
        oci_archive.main(str(out), {"tree": {"path": tree}}, dict(ARCH))
    assert os.listdir(out) == []


def test_bad_options_fail_before_work(oci_archive, tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="options.filename"):
        oci_archive.main(str(out), {"tree": {"path": tree}}, dict(ARCH, filename="../escape"))
    with pytest.raises(ValueError, match="ExposedPorts"):
        oci_archive.main(str(out), {"tree": {"path": tree}}, dict(ARCH, config={"ExposedPorts": ["x"]}))
    assert os.listdir(out) == [] and not os.path.exists(tmp_path / "escape")


def test_json_blobs_are_canonical(oci_archive):
    blob = ociarchive.layout.json_blob({"b": 1, "a": {"d": [1, 2], "c": "é"}})
    assert blob == '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()
    assert json.loads(blob) == {"b": 1, "a": {"d": [1, 2], "c": "é"}}


def written(path, parts):
    """A file holding `parts` one after the other, read-write; (fd, offset of each)"""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    offsets = []
    for part in parts:
        offsets.append(os.lseek(fd, 0, os.SEEK_CUR))
        os.write(fd, part)
    return fd, offsets


@pytest.mark.parametrize("follow", [0, 1, 3])
def test_trail_hashes_behind_the_writer_from_where_a_recorded_blob_is_left(tmp_path, follow):
    """Pieces that follow a recorded blob are not hashed; once one does not,
    the blob's sha256 is still that of every byte written, in order"""
    parts = [os.urandom(70_000 + 4099 * i) for i in range(5)]
    fd, offsets = written(str(tmp_path / "blob"), parts)
    chain = ociarchive.cache.Chain("index", "archive", [None] * 5, "sha256:" + "0" * 64, sum(map(len, parts)))
    try:
        trail = ociarchive.archive.Trail()
        for i, (part, offset) in enumerate(zip(parts, offsets)):
            trail.add((fd, offset), len(part), (fd, offset), (chain, i) if i < follow else None)
        trail.update(b"and a tail")
        assert trail.result() == (sha256(b"".join(parts) + b"and a tail"), sum(map(len, parts)) + 10)
    finally:
        os.close(fd)


def test_trail_that_follows_a_recorded_blob_to_its_end_is_that_blob(tmp_path):
    parts = [b"a" * 1000, b"b" * 2000]
    fd, offsets = written(str(tmp_path / "blob"), parts)
    chain = ociarchive.cache.Chain("index", "archive", [None, None], "sha256:" + "1" * 64, 3000)
    try:
        trail = ociarchive.archive.Trail()
        for i, (part, offset) in enumerate(zip(parts, offsets)):
            trail.add((fd, offset), len(part), (fd, offset), (chain, i))
        assert trail.result() == ("sha256:" + "1" * 64, 3000)  # taken from the record, nothing hashed
    finally:
        os.close(fd)


def test_abandoned_trail_leaves_no_thread(tmp_path):
    """A build that fails with a hash running behind the writer stops it on close"""
    fd, offsets = written(str(tmp_path / "blob"), [os.urandom(100_000)])
    try:
        blob = ociarchive.archive.BlobWriter(fd)
        blob.begin()
        blob.trail.add((fd, offsets[0]), 100_000, (fd, offsets[0]))  # nothing followed: hashed behind
        assert any(t.name == "blob-hash" for t in threading.enumerate())
        blob.close()
        assert not any(t.name == "blob-hash" for t in threading.enumerate())
    finally:
        os.close(fd)
