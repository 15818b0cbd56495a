"""Manifest format version 2 (what osbuild's generators write): validate, load, describe, output

```
{"version": "2",
 "pipelines": [{"name": "build", "runner": "org.osbuild.debian12", "stages": [...]},
               {"name": "os", "build": "name:build", "source-epoch": 1700000000,
                "stages": [{"type": "org.osbuild.X", "options": {}, "inputs": {...}}]}],
 "sources": {"org.osbuild.curl": {"items": {"sha256:...": "https://..."}}}}
```
The part of format 2 that container builds use: named pipelines, `build`
as `name:X`, `runner`, `source-epoch`; stages with `type`, `options` and
`inputs`; inputs `org.osbuild.tree` (origin `org.osbuild.pipeline`, a
`name:` reference to an earlier pipeline) and `org.osbuild.files` (origin
`org.osbuild.source`); sources `org.osbuild.curl` and `org.osbuild.inline`.
Anything else of the format (devices, mounts, other inputs and origins) is
refused during validation, with its JSON path, before anything runs.
"""

from typing import Any, Callable, Dict, List, Set

from ..meta import Index, ModuleError, ValidationResult, load_schema
from ..meta import validate as validate_schema
from ..pipelines import ManifestV2, NamedPipeline

VERSION = "2"
INPUT_ORIGINS = {"org.osbuild.tree": "org.osbuild.pipeline", "org.osbuild.files": "org.osbuild.source"}
SOURCES = ("org.osbuild.curl", "org.osbuild.inline")


def references(value: Any) -> Dict[str, Dict[str, Any]]:
    """An input's references as {ref: options}: given as a list of names (or {"id", "options"}) or an object"""
    if isinstance(value, dict):
        return {str(k): v if isinstance(v, dict) else {} for k, v in value.items()}
    out: Dict[str, Dict[str, Any]] = {}
    for item in value if isinstance(value, list) else []:
        if isinstance(item, str):
            out[item] = {}
        elif isinstance(item, dict) and isinstance(item.get("id"), str):
            out[item["id"]] = item.get("options", {}) if isinstance(item.get("options"), dict) else {}
    return out


def _validate_input(result: ValidationResult, index: Index, key: str, desc: Dict[str, Any], *, path: List[Any],
                    earlier: List[str], items: Set[str]) -> None:
    kind, origin = desc.get("type"), desc.get("origin")
    if kind not in INPUT_ORIGINS:
        result.fail(path + ["type"], f"input type {kind!r} is not supported by this engine "
                                     f"(it takes {', '.join(sorted(INPUT_ORIGINS))})")
        return
    if origin != INPUT_ORIGINS[kind]:
        result.fail(path + ["origin"], f"{kind} inputs come from origin {INPUT_ORIGINS[kind]!r} here, "
                                       f"not {origin!r}")
        return
    try:
        result.merge(validate_schema(desc, index.get_module_info("Input", kind).v2_schema()), path)
    except ModuleError as e:
        result.fail(path + ["type"], str(e))
        return
    for ref in references(desc.get("references")):
        if origin == "org.osbuild.pipeline":
            if not ref.startswith("name:") or ref[5:] not in earlier:
                result.fail(path + ["references"], f"input {key}: {ref!r} names no earlier pipeline "
                                                   "(write name:PIPELINE)")
        elif ref not in items:
            result.fail(path + ["references"], f"input {key}: {ref!r} is no item of the manifest's sources")


def _validate_stage(result: ValidationResult, index: Index, stage: Dict[str, Any], *, path: List[Any],
                    earlier: List[str], items: Set[str]) -> None:
    for unsupported in ("devices", "mounts"):
        if stage.get(unsupported):
            result.fail(path + [unsupported], f"{unsupported} are not supported by this engine")
    try:
        info = index.get_module_info("Stage", stage["type"])
    except ModuleError as e:
        result.fail(path + ["type"], str(e))
        return
    result.merge(validate_schema(stage, info.v2_schema()), path)
    inputs = stage.get("inputs")
    if isinstance(inputs, dict):
        for key, desc in inputs.items():
            if isinstance(desc, dict):
                _validate_input(result, index, key, desc, path=path + ["inputs", key], earlier=earlier, items=items)


def validate(description: Any, index: Index) -> ValidationResult:
    """All problems of a format-2 manifest at once, each with its JSON path"""
    result = validate_schema(description, load_schema("osbuild2"), "manifest")
    if not result.valid or not isinstance(description, dict):
        return result
    items: Set[str] = set()
    for name, source in description.get("sources", {}).items():
        if name not in SOURCES:
            result.fail(["sources", name], f"source {name!r} is not supported by this engine "
                                           f"(it takes {', '.join(SOURCES)})")
            continue
        try:
            result.merge(validate_schema(source, index.get_module_info("Source", name).v2_schema()),
                         ["sources", name])
        except ModuleError as e:
            result.fail(["sources", name], str(e))
        items.update(source.get("items", {}))
    earlier: List[str] = []
    for i, pipeline in enumerate(description.get("pipelines", [])):
        path: List[Any] = ["pipelines", i]
        name = pipeline["name"]
        if name in earlier:
            result.fail(path + ["name"], f"{name!r} is also the name of pipelines[{earlier.index(name)}]")
        build = pipeline.get("build")
        if build and build[5:] not in earlier:
            result.fail(path + ["build"], f"{build!r} names no earlier pipeline")
        if pipeline.get("runner"):
            try:
                index.get_module_info("Runner", pipeline["runner"])
            except ModuleError as e:
                result.fail(path + ["runner"], str(e))
        for j, stage in enumerate(pipeline.get("stages", [])):
            _validate_stage(result, index, stage, path=path + ["stages", j], earlier=earlier, items=items)
        earlier.append(name)
    return result


def load(description: Dict[str, Any], index: Index, host_runner: Callable[[], str]) -> ManifestV2:
    """A ManifestV2 from a validated description"""
    manifest = ManifestV2()
    manifest.metadata = description.get("metadata", {})
    for name, source in description.get("sources", {}).items():
        manifest.sources[name] = source
        manifest.source_infos[name] = index.get_module_info("Source", name)
    runners: Dict[str, str] = {}  # a pipeline's "runner": the runner of its tree as a build root
    for desc in description.get("pipelines", []):
        build = desc.get("build")
        build_pipeline = manifest.pipelines[build[5:]] if build else None
        runner = runners[build_pipeline.name] if build_pipeline else host_runner()
        pipeline = NamedPipeline(desc["name"], runner, build_pipeline.id if build_pipeline else None,
                                 desc.get("source-epoch"))
        runners[pipeline.name] = desc.get("runner") or host_runner()
        for stage_desc in desc.get("stages", []):
            stage = pipeline.add_stage(index.get_module_info("Stage", stage_desc["type"]),
                                       stage_desc.get("options", {}))
            for key, inp in stage_desc.get("inputs", {}).items():
                refs = {}
                for ref, options in references(inp["references"]).items():
                    target = manifest.pipelines[ref[5:]].id if ref.startswith("name:") else ref
                    refs[target or ""] = options
                stage.add_input(key, index.get_module_info("Input", inp["type"]), inp["origin"],
                                inp.get("options", {}), refs)
        manifest.pipelines[pipeline.name] = pipeline
    return manifest


def _describe_inputs(inputs: Dict[str, Any], names: Dict[str, str], with_id: bool) -> Dict[str, Any]:
    """A stage's inputs as the manifest gives them (pipeline references by name:, or by id if asked)"""
    out = {}
    for key, inp in inputs.items():
        refs = {(r if with_id or inp.origin != "org.osbuild.pipeline" else f"name:{names.get(r, r)}"): o
                for r, o in (inp.refs or {}).items()}
        out[key] = {"type": inp.name, "origin": inp.origin, "references": refs,
                    **({"options": inp.options} if inp.options else {})}
    return out


def _describe_pipeline(pipeline: NamedPipeline, names: Dict[str, str], runner_of: Dict[str, str],
                       with_id: bool) -> Dict[str, Any]:
    out: Dict[str, Any] = {"name": pipeline.name}
    if pipeline.build:
        out["build"] = pipeline.build if with_id else f"name:{names[pipeline.build]}"
    if pipeline.id in runner_of:
        out["runner"] = runner_of[pipeline.id]
    if pipeline.source_epoch is not None:
        out["source-epoch"] = pipeline.source_epoch
    stages = []
    for stage in pipeline.stages:
        desc: Dict[str, Any] = {"type": stage.name}
        if with_id:
            desc["id"] = stage.id
        if stage.options:
            desc["options"] = stage.options
        if stage.inputs:
            desc["inputs"] = _describe_inputs(stage.inputs, names, with_id)
        stages.append(desc)
    if stages:
        out["stages"] = stages
    return out


def describe(manifest: ManifestV2, with_id: bool = False) -> Dict[str, Any]:
    """The manifest as a format-2 description; with the id of every stage if asked"""
    names = {p.id: p.name for p in manifest.pipelines.values() if p.id}
    runner_of = {}
    for pipeline in manifest.pipelines.values():
        if pipeline.build:
            runner_of[pipeline.build] = pipeline.runner
    pipelines = [_describe_pipeline(pipeline, names, runner_of, with_id) for pipeline in manifest.pipelines.values()]
    description: Dict[str, Any] = {"version": VERSION, "pipelines": pipelines}
    if manifest.sources:
        description["sources"] = manifest.sources
    if manifest.metadata:
        description["metadata"] = manifest.metadata
    return description


def output(result: Dict[str, Any]) -> Dict[str, Any]:
    """The --json result: success, each built pipeline's stages (log), their metadata"""
    log = {name: [{"id": s["id"], "type": s["name"], "output": s["output"],
                   **({} if s["success"] else {"success": False, "error": s["error"]})} for s in stages]
           for name, stages in result.get("pipelines", {}).items()}
    metadata: Dict[str, Any] = {}
    for name, stages in result.get("pipelines", {}).items():
        for stage in stages:
            if stage.get("metadata"):
                metadata.setdefault(name, {})[stage["name"]] = stage["metadata"]
    out: Dict[str, Any] = {"type": "result" if result["success"] else "error", "success": result["success"],
                           "metadata": metadata, "log": log}
    if "duration" in result:
        out["duration"] = result["duration"]
    return out
