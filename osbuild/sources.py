"""Sources: host-side programs that fetch what stages read

Each source module of the manifest's `sources` is run on the host with
`{"options", "cache"}` as JSON on stdin and prints `{}` or `{"error"}`. Its
cache is `STORE/sources/NAME`; stages see the sources folder read-only at
/run/osbuild/sources.
"""

import json
import os
import subprocess
from typing import Any, Dict

from .meta import ModuleInfo, host_module_env, host_python
from .monitor import BaseMonitor

# format 2's file sources keep their files where org.osbuild.files does: one
# folder for the files input to hand to stages
CACHE_FOLDERS = {"org.osbuild.curl": "org.osbuild.files", "org.osbuild.inline": "org.osbuild.files"}


class SourceError(Exception):
    """A source could not be fetched"""


def fetch_all(sources: Dict[str, Any], infos: Dict[str, ModuleInfo], sources_dir: str,
              monitor: BaseMonitor) -> None:
    """Run every source of the manifest; raises SourceError on the first failure"""
    env = host_module_env()
    for name, options in sorted(sources.items()):
        info = infos[name]
        message = {"options": options, "cache": os.path.join(sources_dir, CACHE_FOLDERS.get(name, name))}
        proc = subprocess.run([host_python(), info.path], input=json.dumps(message), capture_output=True,
                              text=True, env=env, check=False)
        if proc.stderr:
            monitor.log(proc.stderr)
        try:
            reply = json.loads(proc.stdout)
        except ValueError:
            raise SourceError(f"source {name}: no valid reply (exit status {proc.returncode})") from None
        if isinstance(reply, dict) and "error" in reply:
            raise SourceError(f"source {name}: {reply['error']}")
        if proc.returncode != 0:
            raise SourceError(f"source {name}: exit status {proc.returncode}")
