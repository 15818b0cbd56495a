"""Stages, pipelines and manifests: ids, and how a build runs

A stage's id is the sha256 of `json.dumps(x, sort_keys=True)` for x in
(name, build, base, options), in that order, as osbuild computes it; a
pipeline's tree id is that of its last stage, its output id that of its
assembler (which is a stage too, with the tree as its `tree` input).
"""

import contextlib
import hashlib
import json
import os
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Set

from . import api
from .buildroot import BuildRoot
from .inputs import Input
from .meta import ModuleInfo
from .monitor import BaseMonitor
from .objectstore import ObjectStore, StoreServer
from .sources import fetch_all
from .util.workdirs import LockedDir, sweep

RUNTIME_PREFIX = "osbuild-run-"
CACHE_MOUNT = "/run/osbuild/cache"


class BuildError(Exception):
    """The build could not go on (not a failing stage: that is a result)"""


class Stage:
    """One module run on a tree"""

    def __init__(self, info: ModuleInfo, build: Optional[str], base: Optional[str],
                 options: Optional[Dict[str, Any]], *, source_epoch: Optional[int] = None, version: int = 1):
        self.info = info
        self.name = info.name
        self.build = build
        self.base = base
        self.options = options if options is not None else {}
        self.inputs: Dict[str, Input] = {}
        self.checkpoint = False
        self.source_epoch = source_epoch
        self.version = version

    @property
    def id(self) -> str:
        """sha256 over (name, build, base, options); in format 2 also the pipeline's
        source-epoch and the ids of the inputs, when there are any, as upstream"""
        m = hashlib.sha256()
        for part in (self.name, self.build, self.base, self.options):
            m.update(json.dumps(part, sort_keys=True).encode())
        if self.version == 2:
            if self.source_epoch is not None:
                m.update(json.dumps(self.source_epoch, sort_keys=True).encode())
            if self.inputs:
                m.update(json.dumps({k: i.id for k, i in self.inputs.items()}, sort_keys=True).encode())
        return m.hexdigest()

    def add_input(self, key: str, info: ModuleInfo, origin: str, options: Dict[str, Any],
                  refs: Optional[Dict[str, Dict[str, Any]]] = None) -> Input:
        inp = Input(info, origin, options, refs)
        self.inputs[key] = inp
        return inp

    def run(self, tree: str, buildroot: BuildRoot, store_api: str, socket_dir: str,
            monitor: BaseMonitor, *, sources_dir: Optional[str] = None,
            cache_dir: Optional[str] = None) -> Dict[str, Any]:
        """Run the stage on `tree` in `buildroot`; returns its result"""
        inputs: Dict[str, Any] = {}
        ro_binds = [(sources_dir, "/run/osbuild/sources")] if sources_dir else []
        for key, inp in self.inputs.items():
            mapped = inp.map(store_api, sources_dir)
            target = f"/run/osbuild/inputs/{key}"
            ro_binds.append((mapped["path"], target))
            inputs[key] = {"path": target, "data": mapped["data"]}
        args: Dict[str, Any] = {
            "tree": "/run/osbuild/tree",
            "options": self.options,
            "inputs": inputs,
            "sources": "/run/osbuild/sources",
            "meta": {"id": self.id},
        }
        env: Dict[str, str] = {}
        if self.source_epoch is not None:
            args["meta"]["source-epoch"] = self.source_epoch
            env["SOURCE_DATE_EPOCH"] = str(self.source_epoch)
        binds = [(tree, "/run/osbuild/tree")]
        if cache_dir:
            # this engine's extension: a folder kept for the module between builds
            binds.append((cache_dir, CACHE_MOUNT))
            args["cache"] = CACHE_MOUNT
        with api.API(args, tmpdir=socket_dir) as server:
            status, output = buildroot.run(
                self.info.path,
                binds=[*binds, (server.socket_dir, "/run/osbuild/api")],
                readonly_binds=ro_binds,
                on_output=monitor.log,
                env=env,
            )
        error: Any = server.error
        if status != 0 and error is None:
            error = f"{self.name} exited with status {status}"
        return {
            "name": self.name,
            "id": self.id,
            "options": self.options,
            "success": status == 0,
            "output": output,
            "metadata": server.metadata,
            "error": error,
        }


class Pipeline:
    """Stages building a tree, on the tree of an optional build pipeline"""

    def __init__(self, runner: str, build: Optional["Pipeline"] = None):
        self.runner = runner
        self.build_pipeline = build
        self.build = build.tree_id if build else None
        self.stages: List[Stage] = []
        self.assembler: Optional[Stage] = None

    @property
    def tree_id(self) -> Optional[str]:
        return self.stages[-1].id if self.stages else None

    @property
    def output_id(self) -> Optional[str]:
        return self.assembler.id if self.assembler else None

    @property
    def id(self) -> Optional[str]:
        return self.output_id or self.tree_id

    def add_stage(self, info: ModuleInfo, options: Optional[Dict[str, Any]]) -> Stage:
        stage = Stage(info, self.build, self.tree_id, options)
        self.stages.append(stage)
        return stage

    def set_assembler(self, info: ModuleInfo, options: Optional[Dict[str, Any]],
                      tree_input: ModuleInfo) -> Stage:
        stage = Stage(info, self.build, self.tree_id, options)
        stage.add_input("tree", tree_input, "org.osbuild.pipeline", {"pipeline": {"id": self.tree_id}})
        self.assembler = stage
        return stage

    def all_stages(self) -> List[Stage]:
        return self.stages + ([self.assembler] if self.assembler else [])


class Context:
    """What every pipeline of one build shares"""

    def __init__(self, *, store: ObjectStore, monitor: BaseMonitor, libdir: str, workdir: str, store_api: str,
                 socket_dir: str):
        self.store = store
        self.monitor = monitor
        self.libdir = libdir
        self.workdir = workdir
        self.store_api = store_api
        self.socket_dir = socket_dir


def run_stage(stage: Stage, tree: str, buildroot: BuildRoot, ctx: Context) -> Dict[str, Any]:
    ctx.monitor.stage(stage.name, stage.id)
    started = time.monotonic()
    result = stage.run(tree, buildroot, ctx.store_api, ctx.socket_dir, ctx.monitor,
                       sources_dir=ctx.store.sources, cache_dir=ctx.store.module_cache(stage.name))
    result["duration"] = round(time.monotonic() - started, 3)
    ctx.monitor.result(result)
    return result


def build_tree(stages: List[Stage], buildroot: BuildRoot, ctx: Context, results: List[Dict[str, Any]]) -> bool:
    """Run the stages after the last one in the store; commit the tree (and
    checkpoints), offering it to the last stage's module cache. False when a
    stage failed."""
    store = ctx.store
    done = -1
    for i in range(len(stages) - 1, -1, -1):
        if store.contains(stages[i].id):
            done = i
            break
    if done >= 0:
        ctx.monitor.cached("stage", stages[done].id)
    tree = store.new_tree(ctx.workdir, stages[done].id if done >= 0 else None)
    for stage in stages[done + 1:]:
        stage_result = run_stage(stage, tree, buildroot, ctx)
        results.append(stage_result)
        if not stage_result["success"]:
            return False
        if stage is stages[-1]:
            stored = store.commit(tree, stage.id, move=True)
            store.offer_output(stage.name, stage.id, stored)
        elif stage.checkpoint:
            store.commit(tree, stage.id)
    return True


def build_pipeline(pipeline: Pipeline, ctx: Context) -> Dict[str, Any]:
    """Build what of `pipeline` is not in the store yet; returns the result"""
    store = ctx.store
    result: Dict[str, Any] = {"success": True, "stages": [], "assembler": None,
                              "tree_id": pipeline.tree_id, "output_id": pipeline.output_id}
    missing_checkpoints = [s for s in pipeline.stages if s.checkpoint and not store.contains(s.id)]
    if pipeline.id is None or (store.contains(pipeline.id) and not missing_checkpoints):
        if pipeline.id:
            ctx.monitor.cached("pipeline", pipeline.id)
        return result

    root = "/"
    if pipeline.build_pipeline:
        build_result = build_pipeline(pipeline.build_pipeline, ctx)
        result["build"] = build_result
        if not build_result["success"]:
            result["success"] = False
            return result
        build_root_id = pipeline.build_pipeline.tree_id
        resolved = store.resolve(build_root_id) if build_root_id else None
        if resolved is None:
            raise BuildError("the build pipeline has no stages: it gives no build root")
        root = resolved
    buildroot = BuildRoot(root, pipeline.runner, ctx.libdir)

    if pipeline.stages and (not store.contains(pipeline.tree_id) or missing_checkpoints):
        if not build_tree(pipeline.stages, buildroot, ctx, result["stages"]):
            result["success"] = False
            return result

    if pipeline.assembler and not store.contains(pipeline.output_id):
        output = tempfile.mkdtemp(prefix="output-", dir=ctx.workdir)
        os.chmod(output, 0o755)
        assembler_result = run_stage(pipeline.assembler, output, buildroot, ctx)
        result["assembler"] = assembler_result
        if not assembler_result["success"]:
            result["success"] = False
            return result
        stored = store.commit(output, pipeline.assembler.id, move=True)
        store.offer_output(pipeline.assembler.name, pipeline.assembler.id, stored)
    return result


@contextlib.contextmanager
def runtime_dir() -> Iterator[str]:
    """A short private folder for sockets (in /run when we may write there);
    those of dead builds are removed first"""
    base = "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
    sweep(base, RUNTIME_PREFIX)
    with LockedDir(base, RUNTIME_PREFIX) as work:
        yield work.path


@contextlib.contextmanager
def build_session(store: ObjectStore, monitor: BaseMonitor, libdir: str, sources: Dict[str, Any],
                  source_infos: Dict[str, ModuleInfo]) -> Iterator[Context]:
    """What a build works in: the sources fetched, a session of the store, a socket
    folder, the store's API for input modules"""
    if sources:
        fetch_all(sources, source_infos, store.sources, monitor)
    # sockets live in a short private directory: a Unix socket path has
    # at most 107 bytes, the store may be anywhere
    with store.session() as workdir, runtime_dir() as socket_dir:
        with StoreServer(store, workdir, socket_dir) as server:
            yield Context(store=store, monitor=monitor, libdir=libdir, workdir=workdir, store_api=server.path,
                          socket_dir=socket_dir)


def trim_store(store: ObjectStore, monitor: BaseMonitor, cache_max_size: Optional[int]) -> None:
    """--cache-max-size: the least recently used objects go until the store fits"""
    if cache_max_size is None:
        return
    removed, size = store.trim(cache_max_size)
    if removed:
        monitor.log(f"store: removed {len(removed)} least recently used objects and cache entries, "
                    f"{size / 2**20:.1f} MiB kept (--cache-max-size)")


class Manifest:
    """A pipeline (with its build pipelines) and its sources"""

    def __init__(self, pipeline: Pipeline, sources: Optional[Dict[str, Any]] = None,
                 source_infos: Optional[Dict[str, ModuleInfo]] = None):
        self.pipeline = pipeline
        self.sources = sources or {}
        self.source_infos = source_infos or {}

    def pipelines(self) -> List[Pipeline]:
        """All pipelines, build pipelines first"""
        chain = []
        current: Optional[Pipeline] = self.pipeline
        while current:
            chain.append(current)
            current = current.build_pipeline
        return list(reversed(chain))

    def mark_checkpoints(self, checkpoints: List[str]) -> Set[str]:
        """Mark stages to be committed; returns the ids that matched nothing"""
        unknown = set(checkpoints)
        for pipeline in self.pipelines():
            for stage in pipeline.all_stages():
                if stage.id in unknown:
                    stage.checkpoint = True
                    unknown.discard(stage.id)
        return unknown

    def build(self, store: ObjectStore, monitor: BaseMonitor, libdir: str,
              output_directory: Optional[str] = None, cache_max_size: Optional[int] = None) -> Dict[str, Any]:
        """Build the manifest into `store`; export the output if asked"""
        with build_session(store, monitor, libdir, self.sources, self.source_infos) as ctx:
            result = build_pipeline(self.pipeline, ctx)
            if result["success"] and output_directory and self.pipeline.output_id:
                store.export(self.pipeline.output_id, output_directory)
            trim_store(store, monitor, cache_max_size)
        return result
