"""The stage API: how a module in the sandbox talks to osbuild

Client side (used by module scripts, stdlib only): `arguments()`,
`metadata()` / `add_metadata()` and `exception()`. They speak the 2021
protocol over the SOCK_SEQPACKET socket `/run/osbuild/api/osbuild`, and
read `/run/osbuild/api/arguments` first, where today's osbuild puts them.

Server side: `API`, a context manager serving one module run from a thread.
"""

import fcntl
import io
import json
import os
import shutil
import sys
import tempfile
import traceback
from typing import Any, Dict, List, Optional, Tuple

from .util import jsoncomm

API_DIR = "/run/osbuild/api"
SOCKET_PATH = API_DIR + "/osbuild"
ARGUMENTS_PATH = API_DIR + "/arguments"


# --- client -------------------------------------------------------------------

def arguments(path: str = SOCKET_PATH) -> Dict[str, Any]:
    """The arguments of this module run: tree, options, inputs, sources, meta"""
    if path == SOCKET_PATH and os.path.exists(ARGUMENTS_PATH):
        with open(ARGUMENTS_PATH, encoding="utf-8") as f:
            data: Dict[str, Any] = json.load(f)
        return data
    with jsoncomm.Socket.new_client(path) as client:
        client.send({"method": "get-arguments"})
        msg, fds = client.recv()
        with fds:
            if not isinstance(msg, dict) or msg.get("type") != "fd":
                raise RuntimeError(f"get-arguments: unexpected reply {msg!r}")
            with os.fdopen(fds.steal(msg["fd"]), encoding="utf-8") as f:
                data = json.load(f)
    return data


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except OSError:
        os.close(fd)
        raise
    return fd


def add_metadata(data: Dict[str, Any], path: str = SOCKET_PATH) -> None:
    """Attach metadata (a JSON object) to the result of this stage"""
    fd = _memfd("metadata", json.dumps(data).encode("utf-8"))
    try:
        with jsoncomm.Socket.new_client(path) as client:
            client.send({"method": "add-metadata", "metadata": 0}, fds=[fd])
    finally:
        os.close(fd)


metadata = add_metadata


def exception(e: BaseException, path: str = SOCKET_PATH) -> None:
    """Report an exception to osbuild, then exit with status 2"""
    traceback.print_exception(type(e), e, e.__traceback__)
    out = io.StringIO()
    traceback.print_tb(e.__traceback__, file=out)
    msg = {"method": "exception",
           "exception": {"type": type(e).__name__, "value": str(e), "traceback": out.getvalue()}}
    with jsoncomm.Socket.new_client(path) as client:
        client.send(msg)
    sys.exit(2)


# --- server -------------------------------------------------------------------

class API(jsoncomm.Service):
    """Serve the stage API for one module run.

    `with API(args) as api:` creates a private directory holding the socket
    (`api.socket_dir`, to be bound at /run/osbuild/api in the sandbox) and
    serves it from a thread until the block ends. Afterwards `api.metadata`
    and `api.error` hold what the module reported.
    """

    def __init__(self, args: Dict[str, Any], tmpdir: Optional[str] = None):
        self.socket_dir = tempfile.mkdtemp(prefix="api-", dir=tmpdir)
        os.chmod(self.socket_dir, 0o755)
        super().__init__(os.path.join(self.socket_dir, "osbuild"))
        self.args = args
        self.metadata: Dict[str, Any] = {}
        self.error: Optional[Dict[str, Any]] = None

    def __enter__(self) -> "API":
        try:
            self.start()
        except OSError:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def dispatch(self, msg: Any, fds: jsoncomm.FdSet) -> Tuple[Any, List[int]]:
        method = msg.get("method") if isinstance(msg, dict) else None
        if method == "get-arguments":
            fd = _memfd("arguments", json.dumps(self.args).encode("utf-8"))
            return {"type": "fd", "fd": 0}, [fd]
        if method == "add-metadata" and len(fds) > 0:
            with os.fdopen(fds.steal(msg.get("metadata", 0)), encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except ValueError:
                    data = None
            if isinstance(data, dict):
                self.metadata.update(data)
            return None, []
        if method == "exception":
            self.error = msg.get("exception")
            return None, []
        return {"error": f"unknown method {method!r}"}, []
