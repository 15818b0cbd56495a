"""Reading OCI archives back in tests: every blob checked against its descriptor"""

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from typing import Any, Dict

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.v1.tar": "none",
}


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "zstd":
        return subprocess.run(["zstd", "-d", "-c"], input=data, capture_output=True, check=True).stdout
    return data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Archive:
    """An OCI archive's members and parsed documents"""

    def __init__(self, path: str):
        self.path = path
        self.members: Dict[str, bytes] = {}
        self.infos: Dict[str, tarfile.TarInfo] = {}
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                self.infos[info.name] = info
                if info.isfile():
                    f = tar.extractfile(info)
                    assert f is not None
                    self.members[info.name] = f.read()
        self.layout = json.loads(self.members["oci-layout"])
        self.index = json.loads(self.members["index.json"])
        self.manifest = json.loads(self.blob(self.index["manifests"][0]))
        self.config = json.loads(self.blob(self.manifest["config"]))
        layer = self.manifest["layers"][0]
        self.compression = LAYER_TYPES[layer["mediaType"]]
        self.layer_blob = self.blob(layer)
        self.layer_tar = decompress(self.layer_blob, self.compression)

    def blob(self, descriptor: Dict[str, Any]) -> bytes:
        algorithm, hexdigest = descriptor["digest"].split(":", 1)
        data = self.members[f"blobs/{algorithm}/{hexdigest}"]
        assert sha256(data) == descriptor["digest"], "blob content does not match its digest"
        assert len(data) == descriptor["size"], "blob size does not match its descriptor"
        return data

    def layer_entries(self) -> Dict[str, tarfile.TarInfo]:
        with tarfile.open(fileobj=io.BytesIO(self.layer_tar), mode="r:") as tar:
            return {info.name: info for info in tar.getmembers()}
