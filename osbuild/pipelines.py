"""Named pipelines (manifest format 2): ids, checkpoints, what to build, building, exports

A format-2 manifest is a list of named pipelines. Each builds a tree with
its stages, on the build root its `build` pipeline made (or the host), and
its stages take inputs: trees of earlier pipelines, files of the sources.
Ids are upstream osbuild's: a stage hashes its name, build, base, options,
the pipeline's source-epoch and its inputs' ids; a pipeline's id is its last
stage's. Only what the exported pipelines need and the store lacks is built.
"""

import collections
import fnmatch
import os
from typing import Any, Dict, List, Optional, Set

from .buildroot import BuildRoot
from .meta import ModuleInfo
from .monitor import BaseMonitor
from .objectstore import ObjectStore
from .pipeline import BuildError, Context, Stage, build_session, build_tree, trim_store


class NamedPipeline:
    """A pipeline of a format-2 manifest"""

    def __init__(self, name: str, runner: str, build: Optional[str], source_epoch: Optional[int]):
        self.name = name
        self.runner = runner  # the runner of the build root it runs in
        self.build = build  # id of the build pipeline, None for the host
        self.source_epoch = source_epoch
        self.stages: List[Stage] = []

    @property
    def id(self) -> Optional[str]:
        return self.stages[-1].id if self.stages else None

    def add_stage(self, info: ModuleInfo, options: Dict[str, Any]) -> Stage:
        stage = Stage(info, self.build, self.id, options, source_epoch=self.source_epoch, version=2)
        self.stages.append(stage)
        return stage

    def dependencies(self, store: ObjectStore) -> List[str]:
        """Ids of the pipelines this one needs built: its build pipeline and, for the
        stages after the last one in the store, the trees they take as inputs"""
        needed = [self.build] if self.build else []
        for stage in reversed(self.stages):
            if store.contains(stage.id):
                break
            for inp in stage.inputs.values():
                if inp.origin == "org.osbuild.pipeline":
                    needed += [ref for ref in inp.refs or {} if ref]
        return needed


class ManifestV2:
    """Named pipelines and the sources their stages take files from"""

    def __init__(self) -> None:
        self.pipelines: Dict[str, NamedPipeline] = collections.OrderedDict()
        self.sources: Dict[str, Dict[str, Any]] = {}
        self.source_infos: Dict[str, ModuleInfo] = {}
        self.metadata: Dict[str, Any] = {}

    def get(self, name_or_id: str) -> Optional[NamedPipeline]:
        if name_or_id in self.pipelines:
            return self.pipelines[name_or_id]
        return next((p for p in self.pipelines.values() if p.id == name_or_id), None)

    def mark_checkpoints(self, patterns: List[str]) -> Set[str]:
        """Mark the stages whose id or name, or whose pipeline's name (its last
        stage), match one of the fnmatch `patterns`; the ids marked"""
        selected = set()
        for pipeline in self.pipelines.values():
            if not pipeline.stages:
                continue
            if any(fnmatch.fnmatch(pipeline.name, p) for p in patterns):
                pipeline.stages[-1].checkpoint = True
                selected.add(pipeline.stages[-1].id)
            for stage in pipeline.stages:
                if any(fnmatch.fnmatch(stage.id, p) or fnmatch.fnmatch(stage.name, p) for p in patterns):
                    stage.checkpoint = True
                    selected.add(stage.id)
        return selected

    def depsolve(self, store: ObjectStore, targets: List[str]) -> List[NamedPipeline]:
        """The pipelines to build for `targets` (names), dependencies first; those in the store are not"""
        order: collections.OrderedDict[str, NamedPipeline] = collections.OrderedDict()
        check = [self.get(t) for t in targets]
        while check:
            pipeline = check.pop()
            if pipeline is None:
                raise BuildError("a pipeline the manifest names is missing")
            if pipeline.id is None or store.contains(pipeline.id):
                continue
            order[pipeline.name] = pipeline
            order.move_to_end(pipeline.name)
            check += [self.get(dep) for dep in pipeline.dependencies(store)]
        return list(reversed(order.values()))

    def build(self, store: ObjectStore, monitor: BaseMonitor, libdir: str, *, exports: List[str],
              output_directory: Optional[str], cache_max_size: Optional[int] = None) -> Dict[str, Any]:
        """Build what the exports need into `store`, then export them to OUTDIR/NAME/"""
        result: Dict[str, Any] = {"success": True, "pipelines": {}}
        with build_session(store, monitor, libdir, self.sources, self.source_infos) as ctx:
            for pipeline in self.depsolve(store, exports):
                monitor.log(f"pipeline {pipeline.name}: {pipeline.id}")
                stages: List[Dict[str, Any]] = []
                result["pipelines"][pipeline.name] = stages
                if not build_named(pipeline, ctx, stages):
                    result["success"] = False
                    break
            if result["success"] and output_directory:
                for name in exports:
                    pipeline = self.pipelines[name]
                    if pipeline.id is None:
                        raise BuildError(f"pipeline {name} has no stages: it has nothing to export")
                    store.export(pipeline.id, os.path.join(output_directory, name))
            trim_store(store, monitor, cache_max_size)
        return result


def build_named(pipeline: NamedPipeline, ctx: Context, results: List[Dict[str, Any]]) -> bool:
    """Run the stages of `pipeline` after the last one in the store; commit its tree
    (and its checkpoints). False when a stage failed."""
    store = ctx.store
    root = "/"
    if pipeline.build:
        resolved = store.resolve(pipeline.build)
        if resolved is None:
            raise BuildError(f"pipeline {pipeline.name}: its build pipeline's tree is not in the store")
        root = resolved
    return build_tree(pipeline.stages, BuildRoot(root, pipeline.runner, ctx.libdir), ctx, results)
