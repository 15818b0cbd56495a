"""The OCI image layout's documents: config, manifest, index, and docker's manifest.json"""

import datetime
import hashlib
import json
import re
from typing import Any, Dict, List, Optional

from .options import config_from_options, platform

MEDIA_TYPES = {
    "config": "application/vnd.oci.image.config.v1+json",
    "manifest": "application/vnd.oci.image.manifest.v1+json",
    "index": "application/vnd.oci.image.index.v1+json",
}

LAYER_MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}

# the manifest's annotation naming the SBOM beside the archive by its digest
SBOM_ANNOTATION = "org.osbuild.sbom.spdx.digest"
# the history line of a single layer
HISTORY_SINGLE = "osbuild org.osbuild.oci-archive"

# a reference Docker accepts: [domain[:port]/]path[:tag], path in lowercase
# (the grammar of github.com/distribution/reference)
DOCKER_REFERENCE = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r":[\w][\w.-]{0,127}$")


def rfc3339(epoch: int) -> str:
    when = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(options: Dict[str, Any], created: int, diff_ids: List[str],
                 created_by: Optional[List[str]] = None) -> Dict[str, Any]:
    """The image configuration for layers with the given diff_ids (and history lines)"""
    goarch, variant = platform(options["architecture"], options.get("variant"))
    stamp = rfc3339(created)
    created_by = created_by or [HISTORY_SINGLE] * len(diff_ids)
    config: Dict[str, Any] = {
        "created": stamp,
        "architecture": goarch,
        "os": "linux",
        "config": config_from_options(options.get("config", {})),
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": stamp, "created_by": line} for line in created_by],
    }
    if variant:
        config["variant"] = variant
    return config


def json_blob(data: Dict[str, Any]) -> bytes:
    """Canonical bytes of a JSON blob: sorted keys, no whitespace"""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def descriptor(media_type: str, blob_digest: str, size: int,
               annotations: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    desc: Dict[str, Any] = {"mediaType": media_type, "digest": blob_digest, "size": size}
    if annotations:
        desc["annotations"] = dict(annotations)
    return desc


def image_manifest(config: bytes, layers: List[Dict[str, Any]], annotations: Dict[str, str]) -> Dict[str, Any]:
    manifest: Dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPES["manifest"],
        "config": descriptor(MEDIA_TYPES["config"], sha256_digest(config), len(config)),
        "layers": list(layers),
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest


def image_index(manifest: bytes, annotations: Dict[str, str], tag: Optional[str]) -> Dict[str, Any]:
    entry_annotations = dict(annotations)
    if tag:
        entry_annotations["org.opencontainers.image.ref.name"] = tag
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPES["index"],
        "manifests": [descriptor(MEDIA_TYPES["manifest"], sha256_digest(manifest), len(manifest), entry_annotations)],
    }


def docker_repo_tag(tag: Optional[str]) -> Optional[str]:
    """The `RepoTags` entry Docker loads for `tag`: name:tag, ':latest' added when
    the tag has no tag part; None when Docker would refuse the name"""
    if not tag:
        return None
    last = tag.rpartition("/")[2]
    if ":" not in last:
        tag += ":latest"
    return tag if DOCKER_REFERENCE.match(tag) else None


def docker_manifest(config_digest: str, layer_digests: List[str], repo_tag: Optional[str]) -> List[Dict[str, Any]]:
    """manifest.json of `docker save`: what Docker before 25 and docker-archive: read"""
    return [{
        "Config": blob_path(config_digest),
        "RepoTags": [repo_tag] if repo_tag else [],
        "Layers": [blob_path(d) for d in layer_digests],
    }]


def blob_path(blob_digest: str) -> str:
    algorithm, hexdigest = blob_digest.split(":", 1)
    return f"blobs/{algorithm}/{hexdigest}"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
