"""The stage API over the 2021 SOCK_SEQPACKET protocol"""

import json
import os

import pytest

from osbuild import api
from osbuild.util import jsoncomm


def test_arguments_metadata_exception_round_trip(tmp_path):
    args = {"tree": "/run/osbuild/tree", "options": {"a": [1, 2]}, "inputs": {}, "meta": {"id": "x"}}
    with api.API(args, tmpdir=str(tmp_path)) as server:
        assert api.arguments(server.path) == args
        api.add_metadata({"packages": ["a"]}, server.path)
        api.metadata({"more": 1}, server.path)
        with pytest.raises(SystemExit) as e:
            api.exception(ValueError("bad thing"), server.path)
        assert e.value.code == 2
        # the server handles messages in order on its own thread; a final
        # request-reply makes sure everything before it was seen
        api.arguments(server.path)
    assert server.metadata == {"packages": ["a"], "more": 1}
    assert server.error["type"] == "ValueError" and server.error["value"] == "bad thing"
    assert not os.path.exists(server.socket_dir)


def test_arguments_come_as_a_sealed_fd(tmp_path):
    with api.API({"x": 1}, tmpdir=str(tmp_path)) as server:
        with jsoncomm.Socket.new_client(server.path) as client:
            client.send({"method": "get-arguments"})
            msg, fds = client.recv()
            assert msg == {"type": "fd", "fd": 0}
            fd = fds.steal(0)
            try:
                assert json.loads(os.pread(fd, 4096, 0)) == {"x": 1}
                with pytest.raises(PermissionError):
                    os.pwrite(fd, b"changed", 0)
            finally:
                os.close(fd)


def test_unknown_method_gets_an_error(tmp_path):
    with api.API({}, tmpdir=str(tmp_path)) as server:
        with jsoncomm.Socket.new_client(server.path) as client:
            client.send({"method": "frobnicate"})
            msg, fds = client.recv()
            fds.close()
    assert msg == {"error": "unknown method 'frobnicate'"}
