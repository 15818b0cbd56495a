"""JSON messages with file descriptors over SOCK_SEQPACKET Unix sockets

One packet carries one UTF-8 JSON object; file descriptors travel beside it
as SCM_RIGHTS ancillary data. This is the wire format of the osbuild stage
API (2021): stdlib only, because module scripts import it in the sandbox.
"""

import json
import os
import select
import socket
import threading
from typing import Any, Dict, List, Optional, Tuple

MAX_PACKET = 2 ** 20
MAX_FDS = 32


class FdSet:
    """File descriptors received with a message; closed unless stolen"""

    def __init__(self, fds: List[int]):
        self._fds: List[Optional[int]] = list(fds)

    def __len__(self) -> int:
        return len(self._fds)

    def steal(self, index: int) -> int:
        fd = self._fds[index]
        if fd is None:
            raise ValueError(f"file descriptor {index} was already taken")
        self._fds[index] = None
        return fd

    def close(self) -> None:
        for fd in self._fds:
            if fd is not None:
                os.close(fd)
        self._fds = []

    def __enter__(self) -> "FdSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Socket:
    """A SOCK_SEQPACKET Unix socket speaking JSON messages"""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    @classmethod
    def new_client(cls, path: str) -> "Socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    def new_server(cls, path: str) -> "Socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            sock.listen()
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def accept(self) -> "Socket":
        conn, _ = self.sock.accept()
        return Socket(conn)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any, fds: Optional[List[int]] = None) -> None:
        data = json.dumps(message).encode("utf-8")
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.send(data)

    def recv(self) -> Tuple[Any, FdSet]:
        """Next message and its fds; (None, empty) when the peer hung up"""
        data, fds, flags, _ = socket.recv_fds(self.sock, MAX_PACKET, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        fdset = FdSet(fds)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            fdset.close()
            raise OSError("jsoncomm: message truncated")
        if not data:
            return None, fdset
        try:
            return json.loads(data.decode("utf-8")), fdset
        except ValueError:
            fdset.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Socket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Service:
    """Serve a socket from a thread; subclasses implement `dispatch`.

    `dispatch(msg, fds)` returns the reply (or None for no reply) and the
    fds to send with it; the sent fds are closed afterwards.
    """

    def __init__(self, path: str):
        self.path = path
        self._server: Optional[Socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop_r, self._stop_w = -1, -1

    def dispatch(self, msg: Any, fds: FdSet) -> Tuple[Any, List[int]]:
        raise NotImplementedError

    def start(self) -> None:
        self._server = Socket.new_server(self.path)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread:
            os.write(self._stop_w, b"x")
            self._thread.join()
            self._thread = None
            for fd in (self._stop_r, self._stop_w):
                os.close(fd)
        if self._server:
            self._server.close()
            self._server = None

    def __enter__(self) -> "Service":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _serve(self) -> None:
        assert self._server is not None
        clients: Dict[int, Socket] = {}
        server = self._server.fileno()
        try:
            while True:
                ready, _, _ = select.select([self._stop_r, server, *clients], [], [])
                if self._stop_r in ready:
                    return
                for fd in ready:
                    if fd == server:
                        client = self._server.accept()
                        clients[client.fileno()] = client
                    elif not self._handle(clients[fd]):
                        clients.pop(fd).close()
        finally:
            for client in clients.values():
                client.close()

    def _handle(self, client: Socket) -> bool:
        try:
            msg, fds = client.recv()
        except (OSError, ValueError):
            return False
        if msg is None:
            return False
        with fds:
            reply, reply_fds = self.dispatch(msg, fds)
        try:
            if reply is not None:
                client.send(reply, fds=reply_fds)
        except OSError:
            return False
        finally:
            for fd in reply_fds:
                os.close(fd)
        return True
