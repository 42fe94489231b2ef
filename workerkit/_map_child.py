"""One child process of ``WorkPool.map``'s driver, and the bytes queued to it.

The driver must never block writing: a child blocked writing a large result to the parent
would wait for the parent forever, and the parent for it. So frames go out with
non-blocking sends (``MSG_DONTWAIT`` on a duplicate of the child's socket) and what the
socket does not take waits in the child's outbox until ``poll`` reports it writable. The
frame format is ``multiprocessing.connection``'s (see ``comm/_wire.py``), so the child reads
it as usual. Where the connection is not a socket (``sock`` is None), frames are written
with ``send_bytes`` and the driver sends large ones only to idle children.
"""

from __future__ import annotations

import collections
import os
import socket
import weakref
from typing import Any, Deque, Optional, Tuple, Union

from .comm._wire import frame_header
from .errors import ChannelClosedError

__all__ = ["BIG_FRAME", "MapChild", "Request"]

BIG_FRAME = 1 << 14  # larger frames are queued without copying their body

# A request: its tag and pickled body, joined (with the length header) only when sent.
Request = Tuple[bytes, Union[bytes, memoryview]]


class MapChild:
    """One child process, the frames queued on it (oldest first), and the bytes of those
    frames its socket has not taken yet."""

    def __init__(self, worker: Any):
        self.worker = worker
        self.conn = worker.channel.connection
        self.fd = self.conn.fileno()
        self.ready = False
        self.queued: Deque[int] = collections.deque()  # sequence numbers of frames in flight
        self.outbox: Deque[memoryview] = collections.deque()
        self.polling_out = False
        self.sock = _socket_of(self.fd)

    def send(self, request: Request) -> None:
        """Send ``tag + body`` (framed as ``Connection.send_bytes`` does) as far as the socket
        takes it now; the rest waits in the outbox. ``OSError`` when the child is gone (the
        frame is then not queued)."""
        tag, body = request
        if self.sock is None:
            self.conn.send_bytes(tag + body)
            return
        size = len(tag) + len(body)
        head = frame_header(size) + tag
        try:
            if size > BIG_FRAME:  # no copy of a large body
                self.outbox.append(memoryview(head))
                self.outbox.append(memoryview(body))
                self.flush()
                return
            data = head + body
            if self.outbox:  # behind bytes the socket has not taken yet
                self.outbox.append(memoryview(data))
                self.flush()
                return
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                self.outbox.append(memoryview(data)[sent:])
        except OSError:
            self.outbox.clear()
            raise

    def flush(self) -> None:
        """Send queued bytes until the socket buffer is full (``OSError``: the child is gone)."""
        assert self.sock is not None
        outbox, send = self.outbox, self.sock.send
        while outbox:
            head = outbox[0]
            try:
                sent = send(head, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if sent == head.nbytes:
                outbox.popleft()
            else:
                outbox[0] = head[sent:]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def fail_all(self) -> ChannelClosedError:
        """End the (dead) child and describe how it ended."""
        from .util import child_ended

        return child_ended(self.worker.channel, "the map worker")


def _socket_of(fd: int) -> Optional[socket.socket]:
    """A socket object on (a duplicate of) ``fd`` for non-blocking sends, or None when the
    connection is not a socket."""
    try:
        sock = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_STREAM)
    except (OSError, ValueError):
        return None
    try:
        # Blocking mode: the file is shared with the connection, which must stay blocking
        # (a socket.setdefaulttimeout() would have made it non-blocking); sends say
        # MSG_DONTWAIT instead.
        sock.setblocking(True)
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    except OSError:
        sock.close()
        return None
    _open_sockets.add(sock)
    return sock


# The duplicates open in this process: a forked child closes its copies at once, so a
# child of ours never holds another child's pipe open.
_open_sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _close_inherited() -> None:
    for sock in list(_open_sockets):
        sock.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)
