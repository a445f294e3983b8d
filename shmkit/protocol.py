"""Messages between the parent (manager) and a worker: length-prefixed pickles
over a SOCK_STREAM socketpair; a file descriptor (the new child's channel at a
fork) travels with a message as SCM_RIGHTS. One request, one reply: the
manager never has two messages in flight to one worker.
"""
from __future__ import annotations

import pickle
import socket
import struct

_HDR = struct.Struct("<I")


def send(sock: socket.socket, obj, fds: list[int] | None = None) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    payload = _HDR.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [payload], fds)
        if sent < len(payload):
            sock.sendall(payload[sent:])
    else:
        sock.sendall(payload)


def recv(sock: socket.socket, with_fds: bool = False):
    """Returns the object (and the received fds if with_fds). EOFError on a closed peer."""
    fds: list[int] = []
    if with_fds:
        data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 4)
    else:
        data = sock.recv(1 << 16)
    if not data:
        raise EOFError("peer closed the channel")
    buf = bytearray(data)
    while len(buf) < _HDR.size:
        more = sock.recv(1 << 16)
        if not more:
            raise EOFError("peer closed the channel mid-message")
        buf += more
    (n,) = _HDR.unpack_from(buf)
    while len(buf) < _HDR.size + n:
        more = sock.recv(max(1 << 16, _HDR.size + n - len(buf)))
        if not more:
            raise EOFError("peer closed the channel mid-message")
        buf += more
    obj = pickle.loads(bytes(buf[_HDR.size:_HDR.size + n]))
    return (obj, fds) if with_fds else obj
