"""Inputs: host-side programs that hand a stage the data it reads

An input module is run on the host with a JSON message on stdin,
`{"options", "origin", "api": {"store": SOCKET}}`, and prints
`{"path": HOST_PATH, "data": {...}}` or `{"error": MSG}` on stdout. The path
is bound read-only into the sandbox at /run/osbuild/inputs/KEY.
"""

import hashlib
import json
import subprocess
from typing import Any, Dict, Optional

from .meta import ModuleInfo, host_module_env, host_python


class InputError(Exception):
    """An input could not be prepared"""


class Input:
    """One input of a stage: a module, where its data comes from, options"""

    def __init__(self, info: ModuleInfo, origin: str, options: Dict[str, Any],
                 refs: Optional[Dict[str, Dict[str, Any]]] = None):
        self.info = info
        self.name = info.name
        self.origin = origin
        self.options = options
        self.refs = refs  # format 2: pipeline ids or source checksums, each with its options

    @property
    def id(self) -> str:
        """As upstream computes it (format 2): module name, origin, references and options"""
        m = hashlib.sha256()
        for part in (self.name, self.origin, self.refs or {}, self.options):
            m.update(json.dumps(part, sort_keys=True).encode())
        return m.hexdigest()

    def map(self, store_api: str, sources_dir: Optional[str] = None) -> Dict[str, Any]:
        """Run the input module; returns {"path": host path, "data": {...}}"""
        message: Dict[str, Any] = {"options": self.options, "origin": self.origin, "api": {"store": store_api}}
        if self.refs is not None:
            message["refs"] = self.refs
            message["sources"] = sources_dir
        proc = subprocess.run([host_python(), self.info.path], input=json.dumps(message),
                              capture_output=True, text=True, env=host_module_env(), check=False)
        try:
            reply = json.loads(proc.stdout)
        except ValueError:
            detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise InputError(f"input {self.name}: no valid reply ({detail})") from None
        if not isinstance(reply, dict):
            raise InputError(f"input {self.name}: reply is not an object")
        if "error" in reply:
            raise InputError(f"input {self.name}: {reply['error']}")
        if proc.returncode != 0 or not isinstance(reply.get("path"), str):
            raise InputError(f"input {self.name}: failed with exit status {proc.returncode}")
        return {"path": reply["path"], "data": reply.get("data", {})}
