"""An OCI archive of a tree, end to end: plan, layers, documents, the file renamed into place"""

import errno
import os
import tarfile
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .archive import BlobWriter
from .cache import CACHE_ID, PieceCache
from .compress import Compressor, compressor, stream_layer
from .diff import TreeDiff, diff_tar_argv, whiteout_headers
from .layout import (
    HISTORY_SINGLE,
    LAYER_MEDIA_TYPES,
    SBOM_ANNOTATION,
    blob_path,
    descriptor,
    docker_manifest,
    docker_repo_tag,
    image_config,
    image_index,
    image_manifest,
    json_blob,
    rfc3339,
    sha256_digest,
)
from .options import DEFAULT_COMPRESSION, check_options, safe_filename, sbom_filename
from .plan import HISTORY_PREFIX, Layer, LayerPlan, plan_layers
from .sbom import document as spdx_document
from .split import SplitLayers
from .tarstream import layer_tar_argv, padding, tar_member
from .util import PHASES, human, write_all


def write_layer(blob: BlobWriter, argv: List[str], comp: Optional[Compressor], mtime: int, *,
                log=print, cache: Optional[PieceCache] = None) -> Dict[str, Any]:
    """Write the layer blob of tar `argv` into the archive"""
    if comp is not None and comp.chunked:
        (layer,) = SplitLayers(argv, comp.argv, blob, os.cpu_count() or 1, cache=cache).run(mtime, log)
        assert layer is not None  # a tar stream is never empty
        return layer
    blob.begin()
    diff_id, raw_size = stream_layer(argv, blob, comp, log)
    blob_digest, size = blob.end(mtime)
    return {"diff_id": diff_id, "raw_size": raw_size, "digest": blob_digest, "size": size}


def write_split_layers(blob: BlobWriter, argv: List[str], root: bytes, options: Dict[str, Any],
                       comp: Optional[Compressor], *, mtime: int, spill_dir: Optional[str], log=print,
                       cache: Optional[PieceCache] = None) -> List[Tuple[Layer, Dict[str, Any]]]:
    """Write the layers of the tree at `root` (whose tar stream `argv` makes)
    as options.layers splits it into the archive; each planned layer that
    holds anything with its result"""
    split = SplitLayers(argv, comp.argv if comp else None, blob, os.cpu_count() or 1,
                        stored=options.get("compression", DEFAULT_COMPRESSION) == "gzip", cache=cache,
                        spill_dir=spill_dir, parent_mtime=options.get("source-epoch") or 0, plan_later=True)
    split.start()  # tar reads the tree while the package databases are read
    started = time.perf_counter()
    try:
        plan = plan_layers(root, options["layers"], log) or LayerPlan.single()
    except BaseException:
        split.abandon()
        raise
    PHASES.add("planning", time.perf_counter() - started)
    log(f"oci-archive: writing up to {len(plan.layers)} layer{'s' if len(plan.layers) > 1 else ''} "
        f"from one pass over the tree, {f'compressed with {comp.name}' if comp else 'uncompressed'}", flush=True)
    split.set_plan(plan)
    return [(layer, made) for layer, made in zip(plan.layers, split.run(mtime, log)) if made]


def write_diff_layer(blob: BlobWriter, before: str, after: str, options: Dict[str, Any],
                     comp: Optional[Compressor], *, mtime: int, log=print,
                     cache: Optional[PieceCache] = None) -> Dict[str, Any]:
    """Write the layer of what changed from tree `before` to tree `after` (see diff.py)"""
    epoch = options.get("source-epoch")
    change = TreeDiff(before, after, epoch)
    entries, whiteouts = change.entries(), change.whiteouts()
    log(f"oci-archive: difference: {len(change.changed)} entries changed or added, {len(whiteouts)} removed",
        flush=True)
    fd, listing = tempfile.mkstemp(prefix="oci-archive-entries-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join((b"./" + entry if entry else b".") + b"\0" for entry in entries))
        split = SplitLayers(diff_tar_argv(after, listing, epoch), comp.argv if comp else None, blob,
                            os.cpu_count() or 1, stored=options.get("compression", DEFAULT_COMPRESSION) == "gzip",
                            cache=cache, prefix=whiteout_headers(whiteouts, epoch or 0))
        (layer,) = split.run(mtime, log)
        assert layer is not None
        return layer
    finally:
        os.unlink(listing)


def open_cache(path: Optional[str], comp: Optional[Compressor], output: Optional[Tuple[str, str]],
               log=print) -> Optional[PieceCache]:
    """The piece cache in `path` (offered by the engine), if there is one to use"""
    if not path or comp is None or not comp.chunked:
        return None
    try:
        return PieceCache(path, comp.argv, output, log)
    except OSError as e:
        log(f"oci-archive: no cache of pieces ({e.strerror}): everything is compressed")
        return None


def write_base_layers(blob: BlobWriter, argv: List[str], tree: str, options: Dict[str, Any], *,
                      comp: Optional[Compressor], mtime: int, spill_dir: str, log,
                      cache: Optional[PieceCache]) -> Tuple[List[str], List[Dict[str, Any]]]:
    """The layer(s) of the tree itself: one, or those options.layers plans; (history lines, results)"""
    if "layers" not in options:
        log(f"oci-archive: writing 1 layer, {f'compressed with {comp.name}' if comp else 'uncompressed'}",
            flush=True)
        return [HISTORY_SINGLE], [write_layer(blob, argv, comp, mtime, log=log, cache=cache)]
    history, layers = [], []
    for planned, layer in write_split_layers(blob, argv, os.fsencode(os.path.abspath(tree)), options, comp,
                                             mtime=mtime, spill_dir=spill_dir, log=log, cache=cache):
        history.append(planned.created_by())
        layers.append(layer)
        log(f"oci-archive: layer {len(layers)}: {layer['entries']} entries, "
            f"{human(layer['raw_size'])}: {planned.describe()}")
    return history, layers


def write_archive(tree: str, path: str, options: Dict[str, Any], created: int, *, log=print,
                  cache_dir: Optional[str] = None, output: Optional[Tuple[str, str]] = None,
                  diffs: Sequence[Tuple[str, str]] = ()) -> Dict[str, Any]:
    """Write the OCI archive of `tree` to `path` (which must not exist yet);
    `output` is (output id, file name) under which the engine keeps it;
    each of `diffs` (name, tree) adds a layer of what changed from the tree before"""
    check_options(options)  # fail before the long work
    compression = options.get("compression", DEFAULT_COMPRESSION)
    comp = compressor(compression, options.get("compression-level"))
    cache = open_cache(cache_dir, comp, output, log)
    mtime = created
    annotations = options.get("annotations", {})

    argv = layer_tar_argv(tree, options.get("source-epoch"))

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)  # read: see archive.Trail
    blob = BlobWriter(fd)
    try:
        history, layers = write_base_layers(blob, argv, tree, options, comp=comp, mtime=mtime, log=log, cache=cache,
                                            spill_dir=os.path.dirname(os.path.abspath(path)))
        before = tree
        for name, after in diffs:
            layers.append(write_diff_layer(blob, before, after, options, comp, mtime=mtime, log=log, cache=cache))
            history.append(f"{HISTORY_PREFIX}changes of input {name}")
            log(f"oci-archive: layer {len(layers)}: {human(layers[-1]['raw_size'])}: changes of input {name}")
            before = after
        if cache:
            log(f"oci-archive: {cache.hits} of {cache.hits + cache.misses} pieces reused from the cache"
                + (f", {cache.damaged} damaged ones compressed again" if cache.damaged else ""), flush=True)

        descriptors = [descriptor(LAYER_MEDIA_TYPES[compression], layer["digest"], layer["size"]) for layer in layers]
        config = json_blob(image_config(options, created, [layer["diff_id"] for layer in layers], history))
        sbom = None
        manifest_annotations = dict(annotations)
        if options.get("sbom"):
            # the SBOM names the config (the image ID), the manifest names the SBOM: no cycle
            sbom, packages = spdx_document(before, options.get("tag") or options["filename"], sha256_digest(config),
                                           rfc3339(created), log)
            manifest_annotations[SBOM_ANNOTATION] = sha256_digest(sbom)
            log(f"oci-archive: sbom: {packages} packages, {sha256_digest(sbom)}")
        manifest = json_blob(image_manifest(config, descriptors, manifest_annotations))
        index = json_blob(image_index(manifest, annotations, options.get("tag")))
        repo_tag = docker_repo_tag(options.get("tag"))
        if options.get("tag") and not repo_tag:
            log(f"oci-archive: tag {options['tag']!r} is no name Docker accepts (lowercase repository): "
                "manifest.json loads untagged")
        docker = json_blob(docker_manifest(sha256_digest(config), [layer["digest"] for layer in layers], repo_tag))
        members = [
            (blob_path(sha256_digest(config)), config),
            (blob_path(sha256_digest(manifest)), manifest),
            ("index.json", index),
            ("manifest.json", docker),
            ("oci-layout", json_blob({"imageLayoutVersion": "1.0.0"})),
        ]
        for name, data in members:
            write_all(fd, tar_member(name, len(data), mtime) + data + padding(len(data)))
        write_all(fd, b"\0" * (2 * tarfile.BLOCKSIZE))  # end of archive
        started = time.monotonic()
        os.fsync(fd)
        PHASES.add("writing", time.monotonic() - started)
        if cache:
            written = os.fstat(fd)
            cache.stamp = (written.st_size, written.st_mtime_ns)
    finally:
        blob.close()
        os.close(fd)
    if cache:
        cache.commit()
        if cache.writable:
            cache.trim()
    return {
        "layers": layers,
        "manifest": sha256_digest(manifest),
        "config": sha256_digest(config),
        "size": sum(layer["size"] for layer in layers),
        "sbom": sbom,
    }


def assemble(tree: str, output_dir: str, options: Dict[str, Any], *, cache: Optional[str] = None,
             output_id: Optional[str] = None, diffs: Sequence[Tuple[str, str]] = (), log=print) -> Dict[str, Any]:
    """Write the OCI archive of the folder `tree` as `options["filename"]` in
    `output_dir`: under a temporary name first, renamed when complete, nothing
    left on failure. `cache` is a folder of the piece cache, `output_id` the
    name under which the engine keeps the output there. Returns the result:
    file name, manifest and config digests, each layer's digest, size,
    diff_id and uncompressed size, the compressed size of all, the seconds
    taken and where they went (`profile`: seconds per phase, summed over
    the threads working in it, so they may add up to more)"""
    filename = safe_filename(options["filename"])
    epoch = options.get("source-epoch")
    created = int(time.time()) if epoch is None else epoch

    target = os.path.join(output_dir, filename)
    temp = os.path.join(output_dir, f".{filename[:200]}.{os.getpid()}.tmp")
    sbom_temp = os.path.join(output_dir, f".{filename[:200]}.spdx.{os.getpid()}.tmp")
    sbom_target = os.path.join(output_dir, sbom_filename(filename))
    started = time.monotonic()
    placed = []
    PHASES.reset()
    try:
        output = (output_id, filename) if output_id and CACHE_ID.fullmatch(output_id) else None
        info = write_archive(tree, temp, options, created, cache_dir=cache, output=output, diffs=diffs, log=log)
        if info["sbom"] is not None:
            write_file(sbom_temp, info["sbom"])
            os.replace(sbom_temp, sbom_target)
            placed.append(sbom_target)
        os.replace(temp, target)
        dirfd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except BaseException as e:
        for path in [temp, sbom_temp, *placed]:
            if os.path.lexists(path):
                os.unlink(path)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RuntimeError(f"no space left on device while writing {filename}") from e
        raise
    elapsed = time.monotonic() - started
    for layer in info["layers"]:
        log(f"oci-archive: {filename}: layer {layer['digest']} {human(layer['size'])} "
            f"(diff_id {layer['diff_id']}, {human(layer['raw_size'])} uncompressed)")
    log(f"oci-archive: {filename}: {len(info['layers'])} layer{'s' if len(info['layers']) > 1 else ''}, "
        f"{human(info['size'])}, manifest {info['manifest']}, {elapsed:.1f} s", flush=True)
    return {
        "filename": filename,
        "manifest": info["manifest"],
        "config": info["config"],
        "layers": [{key: layer[key] for key in ("digest", "size", "diff_id", "raw_size")} for layer in info["layers"]],
        "size": info["size"],
        **({"sbom": {"filename": sbom_filename(filename), "digest": sha256_digest(info["sbom"])}}
           if info["sbom"] is not None else {}),
        "seconds": round(elapsed, 3),
        "profile": PHASES.report(),
    }


def write_file(path: str, data: bytes) -> None:
    """A new file with `data`, on disk before it is renamed into place"""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
