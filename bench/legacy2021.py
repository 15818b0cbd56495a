#!/usr/bin/python3
"""The 2021 oci-archive algorithm, reimplemented as the benchmark's baseline

    legacy2021.py TREE OUTPUT_DIR FILENAME

What osbuild's 2021 assembler did, step by step: tar the tree to a file,
`sha256sum` it, `gzip -S .compressed` it on one core, `sha256sum` the
result, write config and manifest blobs (hashed with `sha256sum` too), and
finally tar the layout into the output with `--remove-files`. The media type
typo is fixed so that the output is a usable image; nothing else is changed.
"""

import datetime
import json
import os
import subprocess
import sys
import tempfile


def sha256sum(path):
    out = subprocess.run(["sha256sum", path], capture_output=True, encoding="utf-8", check=True).stdout
    return out.split(" ", 1)[0]


def add_file(blobs, path, media_type):
    digest = sha256sum(path)
    size = os.stat(path).st_size
    os.rename(path, os.path.join(blobs, digest))
    return {"digest": "sha256:" + digest, "size": size, "mediaType": media_type}


def add_json(blobs, data, media_type):
    path = os.path.join(blobs, "temporary.js")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return add_file(blobs, path, media_type)


def main(tree, output_dir, filename):
    with tempfile.TemporaryDirectory(dir=output_dir) as tmpdir:
        workdir = os.path.join(tmpdir, "output")
        blobs = os.path.join(workdir, "blobs", "sha256")
        os.makedirs(blobs)
        layer = os.path.join(blobs, "layer.tar")
        names = sorted(os.listdir(tree)) or ["."]
        subprocess.run(["tar", "--selinux", "--acls", "--xattrs", "-cf", layer, "-C", tree, *names], check=True)
        diff_id = "sha256:" + sha256sum(layer)
        subprocess.run(["gzip", "-S", ".compressed", layer], check=True)
        layer_info = add_file(blobs, layer + ".compressed", "application/vnd.oci.image.layer.v1.tar+gzip")
        config = {
            "created": datetime.datetime.utcnow().isoformat() + "Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        manifest = {
            "schemaVersion": 2,
            "config": add_json(blobs, config, "application/vnd.oci.image.config.v1+json"),
            "layers": [layer_info],
        }
        index = {"schemaVersion": 2,
                 "manifests": [add_json(blobs, manifest, "application/vnd.oci.image.manifest.v1+json")]}
        with open(os.path.join(workdir, "index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f)
        with open(os.path.join(workdir, "oci-layout"), "w", encoding="utf-8") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        subprocess.run(["tar", "--remove-files", "-cf", os.path.join(output_dir, filename),
                        f"--directory={workdir}", *os.listdir(workdir)], check=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
