"""Manifest format version 1: load, validate, describe, output

```
{"pipeline": {"build": {"pipeline": {...}, "runner": "org.osbuild.NAME"},
              "stages": [{"name": "org.osbuild.X", "options": {}}],
              "assembler": {"name": "org.osbuild.Y", "options": {}}},
 "sources": {"org.osbuild.files": {...}}}
```
The assembler becomes a stage whose `tree` input (org.osbuild.tree) is the
tree the stages built.
"""

from typing import Any, Callable, Dict, List, Optional

from ..meta import Index, ModuleError, ValidationResult, load_schema
from ..meta import validate as validate_schema
from ..pipeline import Manifest, Pipeline

VERSION = "1"
TREE_INPUT = "org.osbuild.tree"


def load_pipeline(description: Dict[str, Any], index: Index, host_runner: Callable[[], str]) -> Pipeline:
    build = description.get("build")
    if build:
        build_pipeline = load_pipeline(build.get("pipeline", {}), index, host_runner)
        pipeline = Pipeline(build["runner"], build_pipeline)
    else:
        pipeline = Pipeline(host_runner())
    for stage in description.get("stages", []):
        pipeline.add_stage(index.get_module_info("Stage", stage["name"]), stage.get("options", {}))
    assembler = description.get("assembler")
    if assembler:
        pipeline.set_assembler(index.get_module_info("Assembler", assembler["name"]),
                               assembler.get("options", {}),
                               index.get_module_info("Input", TREE_INPUT))
    return pipeline


def load(description: Dict[str, Any], index: Index, host_runner: Callable[[], str]) -> Manifest:
    """A Manifest from a (validated) v1 description"""
    pipeline = load_pipeline(description.get("pipeline", {}), index, host_runner)
    sources = description.get("sources", {})
    infos = {name: index.get_module_info("Source", name) for name in sources}
    return Manifest(pipeline, sources, infos)


def _validate_module(result: ValidationResult, index: Index, klass: str, entry: Dict[str, Any],
                     path: List[Any]) -> None:
    name = entry.get("name")
    if not isinstance(name, str):
        return  # the manifest schema reported it
    try:
        info = index.get_module_info(klass, name)
        schema = info.options_schema()
    except ModuleError as e:
        result.fail(path + ["name"], str(e))
        return
    options = entry.get("options", {})
    if isinstance(options, dict):
        result.merge(validate_schema(options, schema), path + ["options"])


def _validate_pipeline(result: ValidationResult, index: Index, description: Any, path: List[Any]) -> None:
    if not isinstance(description, dict):
        return
    build = description.get("build")
    if isinstance(build, dict):
        _validate_pipeline(result, index, build.get("pipeline"), path + ["build", "pipeline"])
        runner = build.get("runner")
        if isinstance(runner, str):
            try:
                index.get_module_info("Runner", runner)
            except ModuleError as e:
                result.fail(path + ["build", "runner"], str(e))
    stages = description.get("stages")
    if isinstance(stages, list):
        for i, stage in enumerate(stages):
            if isinstance(stage, dict):
                _validate_module(result, index, "Stage", stage, path + ["stages", i])
    assembler = description.get("assembler")
    if isinstance(assembler, dict):
        _validate_module(result, index, "Assembler", assembler, path + ["assembler"])


def validate(description: Any, index: Index) -> ValidationResult:
    """All problems of a v1 manifest at once, each with its JSON path"""
    result = validate_schema(description, load_schema("osbuild1"), "manifest")
    if not isinstance(description, dict):
        return result
    _validate_pipeline(result, index, description.get("pipeline"), ["pipeline"])
    sources = description.get("sources")
    if isinstance(sources, dict):
        for name, options in sources.items():
            try:
                info = index.get_module_info("Source", name)
            except ModuleError as e:
                result.fail(["sources", name], str(e))
                continue
            if isinstance(options, dict):
                result.merge(validate_schema(options, info.options_schema()), ["sources", name])
    return result


def describe(manifest: Manifest, with_id: bool = False) -> Dict[str, Any]:
    """The manifest as a v1 description; with ids of every stage if asked"""

    def describe_stage(stage: Any) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": stage.name}
        if with_id:
            out["id"] = stage.id
        if stage.options:
            out["options"] = stage.options
        return out

    def describe_pipeline(pipeline: Pipeline) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if pipeline.build_pipeline:
            out["build"] = {"pipeline": describe_pipeline(pipeline.build_pipeline), "runner": pipeline.runner}
        if pipeline.stages:
            out["stages"] = [describe_stage(s) for s in pipeline.stages]
        if pipeline.assembler:
            out["assembler"] = describe_stage(pipeline.assembler)
        return out

    description: Dict[str, Any] = {"pipeline": describe_pipeline(manifest.pipeline)}
    if manifest.sources:
        description["sources"] = manifest.sources
    return description


def output(manifest: Manifest, result: Dict[str, Any]) -> Dict[str, Any]:
    """The --json result: success, build, stages, assembler (and the ids)"""

    def convert(pipeline: Optional[Pipeline], res: Dict[str, Any]) -> Dict[str, Any]:
        out: Dict[str, Any] = {"success": res["success"]}
        if pipeline and pipeline.build_pipeline and "build" in res:
            out["build"] = convert(pipeline.build_pipeline, res["build"])
        out["stages"] = res.get("stages", [])
        if res.get("assembler") is not None:
            out["assembler"] = res["assembler"]
        out["tree_id"] = res.get("tree_id")
        out["output_id"] = res.get("output_id")
        if "duration" in res:
            out["duration"] = res["duration"]
        return out

    return convert(manifest.pipeline, result)
